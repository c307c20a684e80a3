"""Flat configuration as a dict of UPPERCASE keys, with `--set KEY=VALUE` overrides checked by type."""
import ast
import difflib
from types import ModuleType
from typing import Any


def config_dict(module: ModuleType) -> dict:
    """Return the module's UPPERCASE names and values, in definition order."""
    return {k: v for k, v in vars(module).items() if k.isupper() and not k.startswith("_")}


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_type(key: str, old: Any, new: Any) -> Any:
    """Return `new` converted to the type of `old`, or raise ValueError (int is accepted for float)."""
    if old is None:
        return new
    if isinstance(old, bool) or isinstance(new, bool):
        if type(new) is type(old):
            return new
    elif isinstance(old, float) and type(new) in (int, float):
        return float(new)
    elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        kinds = {type(v) for v in old}
        if len(kinds) == 1 and old:
            new = [_check_type(f"{key}[{i}]", old[0], v) for i, v in enumerate(new)]
        return type(old)(new)
    elif type(new) is type(old):
        return new
    raise ValueError(f"{key} must be {_type_name(old)} like {old!r}, got {_type_name(new)} {new!r}")


def closest_keys(cfg: dict, key: str, n: int = 5) -> list[str]:
    """Up to n keys of cfg that look like key: near spellings (any case) first, then keys that contain it (or its
    singular: EPOCHS finds the *_EPOCH keys)."""
    wanted = key.strip().upper()
    stem = wanted[:-1] if wanted.endswith("S") else wanted
    close = difflib.get_close_matches(wanted, list(cfg), n=n, cutoff=0.6)
    containing = [k for k in cfg if len(stem) >= 2 and stem in k and k not in close]
    return (close + containing)[:n]


def _unknown_key_message(cfg: dict, key: str, item: str) -> str:
    close = closest_keys(cfg, key)
    hint = f"closest valid keys: {', '.join(close)}" if close else "no valid key is close"
    return f"unknown config key {key!r} in --set {item!r}; {hint} (every key is in config_fred.py)"


def parse_override(cfg: dict, item: str) -> tuple[str, Any]:
    """Parse one `KEY=VALUE` (VALUE a Python literal; a bare word is accepted for str keys) against cfg."""
    if "=" not in item:
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}"
                         + (f", e.g. {item.strip()}={cfg[item.strip()]!r}" if item.strip() in cfg else ""))
    key, text = (s.strip() for s in item.split("=", 1))
    if key not in cfg:
        raise ValueError(_unknown_key_message(cfg, key, item))
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if not isinstance(cfg[key], str):
            raise ValueError(f"--set {item!r}: {text!r} is not a Python literal; {key} is "
                             f"{_type_name(cfg[key])} like {cfg[key]!r}") from None
        value = text
    try:
        return key, _check_type(key, cfg[key], value)
    except ValueError as e:
        raise ValueError(f"--set {item!r}: {e}") from None


def apply_overrides(cfg: dict, sets: list[str]) -> dict:
    """Return a copy of cfg with each `KEY=VALUE` applied; unknown keys and wrong types raise ValueError."""
    out = dict(cfg)
    for item in sets or []:
        key, value = parse_override(out, item)
        out[key] = value
    return out
