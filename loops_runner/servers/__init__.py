"""The local Loops stack: trainer, sampler and control-plane servers."""
