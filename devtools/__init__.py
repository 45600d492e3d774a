"""Development helpers shared by tests/, bench/ and scripts/ (never imported by the pack itself): tiny random
checkpoints in both layouts, the diffusers reference modules, and a ComfyUI stand-in harness."""
