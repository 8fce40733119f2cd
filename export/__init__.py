"""Export of trained SavedModels into one model repository for TF Serving, Triton and our server."""
