"""Fine-tuning PixelLM on a robot's own domain: data, LoRA training, evaluation, export."""
