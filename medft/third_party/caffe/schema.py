"""Caffe's weight-file messages, built from field numbers at import time (no protoc needed).

The same subset as `caffe_subset.proto` (read that for the schema); the two must agree.
Messages live in a private descriptor pool, so they never clash with a `caffe_pb2` that
pycaffe may have registered in the default pool.

    from medft.third_party.caffe import schema
    net = schema.NetParameter.FromString(open('bvlc_alexnet.caffemodel', 'rb').read())
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_SCALARS = {
    'float': _F.TYPE_FLOAT, 'double': _F.TYPE_DOUBLE, 'int32': _F.TYPE_INT32,
    'int64': _F.TYPE_INT64, 'uint32': _F.TYPE_UINT32, 'bool': _F.TYPE_BOOL,
    'string': _F.TYPE_STRING,
}

# message -> [(label, type, name, number, options)]; options: 'packed' or a default value.
_MESSAGES = {
    'BlobShape': [
        ('repeated', 'int64', 'dim', 1, 'packed'),
    ],
    'BlobProto': [
        ('optional', 'BlobShape', 'shape', 7, None),
        ('repeated', 'float', 'data', 5, 'packed'),
        ('repeated', 'float', 'diff', 6, 'packed'),
        ('repeated', 'double', 'double_data', 8, 'packed'),
        ('repeated', 'double', 'double_diff', 9, 'packed'),
        ('optional', 'int32', 'num', 1, '0'),
        ('optional', 'int32', 'channels', 2, '0'),
        ('optional', 'int32', 'height', 3, '0'),
        ('optional', 'int32', 'width', 4, '0'),
    ],
    'NetParameter': [
        ('optional', 'string', 'name', 1, None),
        ('repeated', 'LayerParameter', 'layer', 100, None),
        ('repeated', 'V1LayerParameter', 'layers', 2, None),
    ],
    'ConvolutionParameter': [
        ('optional', 'uint32', 'num_output', 1, None),
        ('optional', 'bool', 'bias_term', 2, 'true'),
        ('repeated', 'uint32', 'pad', 3, None),
        ('repeated', 'uint32', 'kernel_size', 4, None),
        ('optional', 'uint32', 'group', 5, '1'),
        ('repeated', 'uint32', 'stride', 6, None),
    ],
    'InnerProductParameter': [
        ('optional', 'uint32', 'num_output', 1, None),
        ('optional', 'bool', 'bias_term', 2, 'true'),
    ],
    'LayerParameter': [
        ('optional', 'string', 'name', 1, None),
        ('optional', 'string', 'type', 2, None),
        ('repeated', 'string', 'bottom', 3, None),
        ('repeated', 'string', 'top', 4, None),
        ('repeated', 'BlobProto', 'blobs', 7, None),
        ('optional', 'ConvolutionParameter', 'convolution_param', 106, None),
        ('optional', 'InnerProductParameter', 'inner_product_param', 117, None),
    ],
    'V1LayerParameter': [
        ('optional', 'V0LayerParameter', 'layer', 1, None),
        ('repeated', 'string', 'bottom', 2, None),
        ('repeated', 'string', 'top', 3, None),
        ('optional', 'string', 'name', 4, None),
        ('optional', 'int32', 'type', 5, None),  # Caffe: enum LayerType (a varint on the wire)
        ('repeated', 'BlobProto', 'blobs', 6, None),
        ('optional', 'ConvolutionParameter', 'convolution_param', 10, None),
        ('optional', 'InnerProductParameter', 'inner_product_param', 17, None),
    ],
    'V0LayerParameter': [
        ('optional', 'string', 'name', 1, None),
        ('optional', 'string', 'type', 2, None),
        ('optional', 'uint32', 'num_output', 3, None),
        ('optional', 'uint32', 'group', 9, '1'),
        ('repeated', 'BlobProto', 'blobs', 50, None),
    ],
}

# Values of Caffe's V1LayerParameter.LayerType that matter for weights.
V1_LAYER_TYPES = {4: 'Convolution', 14: 'InnerProduct', 39: 'Deconvolution'}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
  proto = descriptor_pb2.FileDescriptorProto(
      name='medft_third_party_caffe_subset.proto', package='caffe', syntax='proto2')
  for message_name, fields in _MESSAGES.items():
    message = proto.message_type.add(name=message_name)
    for label, type_name, name, number, option in fields:
      field = message.field.add(
          name=name, number=number, label=_OPTIONAL if label == 'optional' else _REPEATED)
      if type_name in _SCALARS:
        field.type = _SCALARS[type_name]
      else:
        field.type, field.type_name = _F.TYPE_MESSAGE, f'.caffe.{type_name}'
      if option == 'packed':
        field.options.packed = True
      elif option is not None:
        field.default_value = option
  return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def _message(name: str):
  return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f'caffe.{name}'))


BlobShape = _message('BlobShape')
BlobProto = _message('BlobProto')
NetParameter = _message('NetParameter')
LayerParameter = _message('LayerParameter')
V1LayerParameter = _message('V1LayerParameter')
V0LayerParameter = _message('V0LayerParameter')
ConvolutionParameter = _message('ConvolutionParameter')
InnerProductParameter = _message('InnerProductParameter')
