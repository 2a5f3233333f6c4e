"""Running any upscaler: the Upscaler interface, tile planning, memory, devices, seeded noise, the MATLAB
resize and the bicubic baseline, one image through a model (grey, alpha, bit depth) and the batch runner."""
