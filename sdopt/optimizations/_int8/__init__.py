"""Static int8 for x86 CPUs: PT2E quantization of the denoiser, compiled by inductor, cached on disk.

`.quantizer` exports, calibrates and converts a module with torchao's X86InductorQuantizer
and compiles it with frozen weights; `.cache` keys and stores the converted program;
`.runner` decides per call which inputs run int8 and builds it from the first call's inputs.
The optimization that installs it is `sdopt.optimizations.static_int8`.
"""
