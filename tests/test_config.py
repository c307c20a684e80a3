"""Config as a dict and `--set KEY=VALUE` overrides: literals, bare strings, type checks, clear errors."""
import re
import types

import pytest

import config_fred
from utils.config import apply_overrides, config_dict


def test_config_dict_takes_uppercase_names_in_order():
    mod = types.ModuleType("m")
    mod.B = 1
    mod.A = [1, 2]
    mod.lower = 3
    mod._HIDDEN = 4
    assert list(config_dict(mod)) == ["B", "A"]
    cfg = config_dict(config_fred)
    assert cfg["INPUT_SHAPE"] == [640, 640] and cfg["UNFREEZE_EPOCH"] == 150 and "os" not in cfg


CFG = {"INPUT_SHAPE": [640, 640], "INIT_LR": 1e-2, "UNFREEZE_EPOCH": 150, "FP16": True, "SPLIT": "canonical",
       "MODEL_PATH": "", "CLASS_NAMES": ["drone"], "PAD": (1.0, 2.0)}


def test_overrides_parse_python_literals_and_keep_types():
    out = apply_overrides(CFG, ["INPUT_SHAPE=[320, 256]", "INIT_LR=1", "UNFREEZE_EPOCH=200", "FP16=False",
                                "SPLIT=random:0.2:0", "MODEL_PATH=weights/yolov8s.pt", "CLASS_NAMES=['a','b']",
                                "PAD=[3, 4.5]"])
    assert out["INPUT_SHAPE"] == [320, 256]
    assert out["INIT_LR"] == 1.0 and isinstance(out["INIT_LR"], float)  # int accepted where float expected
    assert out["UNFREEZE_EPOCH"] == 200 and out["FP16"] is False
    assert out["SPLIT"] == "random:0.2:0" and out["MODEL_PATH"] == "weights/yolov8s.pt"  # bare strings
    assert out["CLASS_NAMES"] == ["a", "b"] and out["PAD"] == (3.0, 4.5)
    assert CFG["INPUT_SHAPE"] == [640, 640], "the input dict must not change"
    assert apply_overrides(CFG, ["SPLIT='challenging'", "MODEL_PATH="])["MODEL_PATH"] == ""


@pytest.mark.parametrize("item, fragment", [
    ("NOPE=1", "unknown config key 'NOPE'"),
    ("UNFREEZE_EPOCH=1.5", "UNFREEZE_EPOCH must be int"),
    ("UNFREEZE_EPOCH=True", "UNFREEZE_EPOCH must be int"),
    ("FP16=1", "FP16 must be bool"),
    ("INIT_LR=abc", "not a Python literal"),
    ("INIT_LR=True", "INIT_LR must be float"),
    ("INPUT_SHAPE=640", "INPUT_SHAPE must be list"),
    ("INPUT_SHAPE=[640, 'a']", "INPUT_SHAPE[1] must be int"),
    ("SPLIT=3", "SPLIT must be str"),
    ("UNFREEZE_EPOCH", "expects KEY=VALUE"),
])
def test_bad_overrides_name_the_problem(item, fragment):
    with pytest.raises(ValueError) as err:
        apply_overrides(CFG, [item])
    assert fragment in str(err.value)


@pytest.mark.parametrize("item, closest", [
    ("UNFREEZE_EPOCHS=200", "UNFREEZE_EPOCH"),     # a typo
    ("unfreeze_epoch=200", "UNFREEZE_EPOCH"),      # lower case
    ("BATCH_SIZE=8", "FREEZE_BATCH_SIZE"),         # a key of another trainer
    ("INPUT_SIZE=[320,320]", "INPUT_SHAPE"),
    ("EPOCHS=100", "UNFREEZE_EPOCH"),              # Ultralytics' name for the total
])
def test_unknown_key_lists_the_closest_keys_not_all_of_them(item, closest):
    cfg = config_dict(config_fred)
    with pytest.raises(ValueError) as err:
        apply_overrides(cfg, [item])
    message = str(err.value)
    suggested = re.search(r"closest valid keys: ([A-Z0-9_]+(?:, [A-Z0-9_]+)*)", message)
    assert suggested, message
    names = suggested.group(1).split(", ")
    assert closest in names and 1 <= len(names) <= 5 and set(names) <= set(cfg)
    assert "config_fred.py" in message  # where the whole list is
    assert sum(key in message for key in cfg) <= 5, "only the closest keys are listed"


def test_unknown_key_with_nothing_close_says_where_the_keys_are():
    with pytest.raises(ValueError) as err:
        apply_overrides(config_dict(config_fred), ["QQQQ=1"])
    assert "unknown config key 'QQQQ'" in str(err.value) and "config_fred.py" in str(err.value)
    assert "closest" not in str(err.value)
