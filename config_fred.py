"""FRED-YOLO configuration: the one home of defaults.

Read by train_fred.py and eval_fred.py only, and turned into objects by build_fred.py; the code below them
gets plain values.
Override any key from the command line: `--set KEY=VALUE` (a Python literal).
Defaults for the schedule, batch sizes and augmentation come from a user's RTX 3090
tuning note, "FRED 数据集训练参数优化说明" (FRED dataset training-parameter optimisation notes).
"""

# ----------------------------------------------------------------- data
DATA_ROOT = "data/FRED"           # FRED root holding <id>/, train/<id>/ or test/<id>/ sequence folders (--demo: data/fred_demo)
SPLIT = "canonical"               # canonical | challenging | random:<val_fraction>:<seed> | folder with *train*.txt and *test*.txt
RGB_IMAGE_DIR = "PADDED_RGB"      # RGB image folder in a sequence: PADDED_RGB (matches RGB_YOLO boxes) or RGB
NUM_CLASSES = 1                   # classes in the label files (FRED: 1, 0 = drone)
CLASS_NAMES = ["drone"]           # one name per class id
FRAME_STRIDE = 1                  # keep every k-th annotated training frame per sequence (1 = all; 30 FPS neighbours are near-duplicates)
VAL_FRAME_STRIDE = 1              # same, for validation frames (raise to evaluate faster)
STRICT_LABELS = False             # True: a label line that does not parse is an error instead of a skipped file
INDEX_CACHE_DIR = ""              # where the frame index cache lives ("" = <DATA_ROOT>/.fred_index_cache, else ~/.cache/fred_yolo)
FUSION_PAIR_TOLERANCE = 1 / 60    # --modality fusion: seconds a PADDED_RGB frame and its event frame may lie apart (half a frame at 30 FPS); farther: unpaired

# ----------------------------------------------------------------- model
FUSION = "early"                  # --modality fusion: "early" (one network, a 5-channel stem: RGB + the event frame's ON and OFF planes) | "mid" (an RGB and an event backbone, fused per level by a 1x1 conv; about twice the backbone compute)
FUSION_RGB_WEIGHTS = ""           # --modality fusion: an RGB checkpoint of train_fred.py to start from ("" = none); see nets/fusion.py for where each part goes
FUSION_EVENT_WEIGHTS = ""         # --modality fusion: an event checkpoint to start from ("" = none); with both: early takes the RGB body, mid each backbone and the event neck and head
PHI = "s"                         # YOLOv8 size: n | s | m | l | x
ARCH = "yolov8"                   # architecture: "yolov8" (levels at strides 8, 16, 32) | "yolov8-p2" (Ultralytics' yolov8-p2.yaml: a fourth level at stride 4 for small objects; more compute) | "yolo11" (Ultralytics' yolo11.yaml, the FRED paper's baseline)
INPUT_SHAPE = [640, 640]          # network input [height, width], pixels, multiples of 32
MODEL_PATH = ""                   # initial weights: our checkpoint or a converted Ultralytics state dict ("" = random init)
ASSIGNER = "tal"                  # which anchors learn which box: "tal" (Ultralytics' task-aligned assigner) | "tal-small" (the same, but a box under 4 finest strides, sqrt(w*h) < 32 px at the input for YOLOv8, makes all its candidate anchors positives with a target score of at least 0.5: tiny drones that no predicted box overlaps yet still train box and class; see nets/assigner.py)

# ----------------------------------------------------------------- schedule
INIT_EPOCH = 0                    # first epoch (0-based) when starting from weights without --resume
FREEZE_EPOCH = 30                 # epochs with the backbone frozen (the first phase)
UNFREEZE_EPOCH = 150              # total epochs, frozen phase included
FREEZE_TRAIN = True               # False: no frozen phase, train everything from the start
FREEZE_BATCH_SIZE = 32            # global batch size while frozen, images
UNFREEZE_BATCH_SIZE = 16          # global batch size once unfrozen, images (lower it on CUDA OOM: 12)

# ----------------------------------------------------------------- optimiser
INIT_LR = 1e-2                    # peak learning rate at nominal batch 64 (scaled by batch/64, clamped)
MIN_LR = INIT_LR * 0.01           # final learning rate of the schedule
OPTIMIZER_TYPE = "sgd"            # sgd (nesterov) | adam | adamw
MOMENTUM = 0.937                  # SGD momentum / Adam beta1
WEIGHT_DECAY = 5e-4               # L2 decay on conv/linear weights only (0 for adam is common)
LR_DECAY_TYPE = "cos"             # cos | step
WARMUP_EPOCHS = 3                 # linear warmup length, epochs (at least WARMUP_MIN_ITERS iterations)
WARMUP_MIN_ITERS = 100            # minimum warmup iterations
GRAD_CLIP = 10.0                  # max gradient norm (0 = off)
EMA_DECAY = 0.9999                # EMA of weights, ramped up over the first ~2000 iterations
WARMUP_BIAS_LR = 0.1              # SGD only: bias learning rate at the start of warmup, falling to the scheduled lr
WARMUP_MOMENTUM = 0.8             # SGD only: momentum at the start of warmup, rising to MOMENTUM
SEED = 0                          # random seed (init, shuffling, augmentation); runs repeat with any NUM_WORKERS (bit for bit on CPU)

# ----------------------------------------------------------------- precision
FP16 = True                       # mixed precision (AMP); on CPU it is ignored
AMP_DTYPE = "fp16"                # fp16 (with GradScaler) | bf16 (no scaler needed)
CHANNELS_LAST = True              # CUDA only: NHWC memory layout for model and images (faster tensor-core convs)
CUDA_GRAPH = True                 # CUDA: replay the model's and the loss's forward+backward from a CUDA graph per phase (no launch overhead); under torchrun the gradients are then all-reduced after each replay (DDP_GRAD_SYNC's "allreduce"); off with SYNC_BN under torchrun; ignored on CPU
CUDA_GRAPH_TARGETS_PER_IMAGE = 16 # CUDA_GRAPH: most boxes per image the graphed loss holds (targets are padded to it; fewer when no training sample can hold that many: a frame's most boxes x 4 with Mosaic x 2 with Mixup); a batch with more trains eagerly, 1..
COMPILE_MODEL = ""                # torch.compile the network the training step runs (inside CUDA_GRAPH's graph): "" off | "inductor" (fuses BatchNorm, SiLU, concatenations and adds into fewer kernels on CUDA; compiles at each phase's first step) | any torch.compile backend name; not with DDP_GRAD_SYNC "ddp" under torchrun. Experimental: speed not measured yet, and in its one GPU test (H100) the fp16 gradients differed from eager's beyond the CUDA graph's tolerance (loss equal); keep it off until tests/test_cuda_graph.py's compiled tests pass

# ----------------------------------------------------------------- augmentation
MOSAIC = True                     # 4-image mosaic
MOSAIC_PROB = 0.5                 # probability of mosaic per sample, 0..1
MIXUP = False                     # blend two (mosaic) samples
MIXUP_PROB = 0.0                  # probability of mixup per sample, 0..1
FUSION_STREAM_DROPOUT = 0.0       # --modality fusion: probability, 0..1, that a training sample's RGB frame is blacked out or its event planes emptied (each half the time), so the network learns to find drones with either sensor alone; 0 = off
SPECIAL_AUG_RATIO = 0.7           # mosaic/mixup only in the first 70% of epochs
HSV_H = 0.015                     # hue jitter, fraction of the hue circle
HSV_S = 0.7                       # saturation jitter, fraction
HSV_V = 0.4                       # value (brightness) jitter, fraction
HSV_ON_GPU = True                 # CUDA: apply the HSV jitter to each batch on the GPU (float HSV) instead of in the loader workers (8-bit OpenCV); on CPU the workers do it
HSV_COMPILE = True                # with HSV_ON_GPU: torch.compile the batch's uint8 -> float and HSV jitter into one kernel (Triton; a few seconds per batch shape, once); falls back to eager with a warning
FLIP_LR = 0.5                     # horizontal flip probability
DEGREES = 0.0                     # random rotation, +/- degrees
TRANSLATE = 0.1                   # random translation, +/- fraction of the input size
SCALE = 0.5                       # random scale gain range, 1 +/- SCALE
MIN_BOX_SIZE = 2.0                # boxes smaller than this after augmentation are dropped, pixels

# ----------------------------------------------------------------- data loading
NUM_WORKERS = 8                   # training dataloader worker processes (capped at the CPU count)
EVAL_WORKERS = 4                  # evaluation dataloader processes (val loss, mAP, eval_fred.py; capped at the CPU count); from the frame cache 4 keep up with an H200, fewer start faster
BATCH_RING = True                 # CUDA: workers collate into reused shared-memory slots (~1 GB per loader in /dev/shm at batch 32) instead of a new segment per batch; False if /dev/shm is small
FRAME_CACHE = "disk"              # off | disk: decode each image once, resized to max(INPUT_SHAPE), into a file all workers map
FRAME_CACHE_MAX_GB = 100.0        # largest frame cache to build, GB; larger: decode files. Per 1280x720 frame: 0.69 MB at 640 (fusion: 1.15 MB, RGB + event planes in one cache); at 1280 RGB 2.76 MB (48,000 frames: 133 GB, so decoded), event 0.23 MB (packed: 11 GB)
FRAME_CACHE_DIR = ""              # frame cache folder ("" = <DATA_ROOT>/.fred_frame_cache, else ~/.cache/fred_yolo/frames; /dev/shm/... = RAM)
SYNC_BN = False                   # multi-GPU (torchrun) only: synchronise BatchNorm statistics across GPUs; turns the CUDA graph off (its collectives cannot be captured)
DDP_GRAD_SYNC = "ddp"             # torchrun without a CUDA graph: how gradients are averaged over the processes: "ddp" (DistributedDataParallel, all-reduce overlapping the backward) | "allreduce" (the bare model, then one all-reduce per dtype of all gradients after the backward: what a CUDA-graphed step always uses, also on CPU/gloo); ignored in one process

# ----------------------------------------------------------------- training run
LOG_INTERVAL = 50                 # iterations between reads of the loss from the GPU (progress bar, NaN check), >= 1
NAN_PATIENCE = 100                # stop after this many skipped steps in a row (non-finite loss), steps

# ----------------------------------------------------------------- saving and evaluation
SAVE_DIR = "logs/fred_{modality}" # run folders go under here; {modality} is filled in
SAVE_PERIOD = 15                  # write ep{NNN}-loss..-val_loss...pth every N epochs
EVAL_PERIOD = 15                  # compute COCO mAP on the val split every N epochs
EVAL_MAP = True                   # False (or --no_eval_map): skip mAP; best.pth then follows val loss
CONFIDENCE = 0.001                # evaluation score threshold
NMS_IOU = 0.7                     # NMS IoU threshold
MAX_DET = 300                     # detections kept per image
EVAL_BATCH_SIZE = 32              # images per evaluation batch
EVAL_RECT = False                 # True: validate and evaluate (val loss, mAP, eval_fred.py) on a letterbox of the frames' aspect, not a square: long side max(INPUT_SHAPE) px, the other the frames' at that scale rounded up to a multiple of 32 px (1280x720 frames: 640x384 at 640, 1280x736 at 1280); same scale, less grey padding (CPU, bench_eval_rect.py --quick: 2.4x the eval img/s, mAP50 -0.009)
