"""A subset of BVLC Caffe's protobuf schema, enough to read `.caffemodel` weights.

See README.md (origin, licence) and caffe_subset.proto (the schema); `schema` builds it.
"""
