"""Running ACE-Step 1.5 on small GPUs.

* ``estimates``  how many bytes each unit (text encoder, DiT with its condition encoder, VAE, the 5 Hz LM) needs on
                 the compute device: its weights (a fixed part plus equal, streamable layers) and the working memory
                 of one request (duration, batch, CFG, VAE tile length);
* ``planner``    for a VRAM budget: which units stay loaded together or take turns, how many DiT/LM layers stay
                 resident and how many stream, the VAE tile length (or a CPU decode);
* ``streaming``  layer weights kept in (pinned) CPU memory and copied to the compute device one or two layers ahead
                 of use, on a side CUDA stream; bit-identical to the fully loaded model;
* ``fp8``        Linear weights stored as float8 with one scale per output channel, computed by dequantising (any
                 device) or by the GPU's scaled fp8 matmul;
* ``vae_tiles``  the VAE tile length from the free memory, and the CPU fallback;
* ``placement``  what the pipeline asks of where its units live (``Placement``), handed in when it is built; the
                 default leaves every unit where it was loaded;
* ``manager``    applies a plan to a loaded checkpoint: places units per phase (itself, or through a host such as
                 ComfyUI's model manager) and reports where the weights were (a ``Placement``).
"""
