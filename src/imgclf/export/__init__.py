"""Export of saved models to other runtimes: the shared steps (`exporter`), one module per format
(`formats`), the int8 quantization and its check."""
