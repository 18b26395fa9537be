"""Transfer of a backbone to a target task: feature extraction, linear probes, fine-tuning."""
