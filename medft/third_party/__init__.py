"""Code and schemas from other projects, each with its licence (caffe: BSD 2-clause)."""
