"""Evaluation: batched inference, NMS, COCO metrics (pycocotools' numbers) and the evaluation plots."""
