# Makes `import pixelllm_d2` resolve to this checkout when the tests run from it (pytest's rootdir conftest).
