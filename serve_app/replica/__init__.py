"""The model replica: its deployment, the batch runner and the Ray tensor-parallel executor."""
