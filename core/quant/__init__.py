"""Block quantization: GGML formats bit-exact, NF4, MX, BFP, mixed datatypes, outlier split."""
