"""ACE-Step 1.5, self-contained: models, checkpoint loading (official Hugging Face layout and Comfy-Org
files), text/lyric/timbre conditioning and the Oobleck VAE. Never imports ComfyUI."""
__version__ = "0.1.0"
