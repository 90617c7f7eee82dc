"""Model backbones shared by the metric families (CLIP towers, tokenizers, checkpoint converters)."""
