"""Training the hybrid adapter (``hyco-rag train hybrid``): data, caches, the loop."""
