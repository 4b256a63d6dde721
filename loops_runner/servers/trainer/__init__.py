"""The LoRA trainer server (PyTorch + PEFT) behind the Loops operation protocol."""
