"""The networks of ACE-Step 1.5 as plain modules: DiT and its encoders, the Oobleck VAE, the text encoder."""
