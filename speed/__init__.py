"""Speed machinery, each part behind its config key: CUDA graph, shared-memory batch ring, decoded-frame cache,
torch.compile of the batch transform."""
