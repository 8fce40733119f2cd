"""TF Serving's ``BatchingParameters`` and ``SSLConfig`` text-proto schemas.

``tensorflow-serving-api`` does not ship these two messages, but ``--batching_parameters_file``
and ``--ssl_config_file`` are text protos of them. The descriptors below declare the same message
names, field names and numbers as TF Serving's ``session_bundle_config.proto`` and
``ssl_config.proto``, so protobuf's own ``text_format`` parses (and rejects) files exactly as
``tensorflow_model_server`` would.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401 - registers wrappers.proto in the pool
)

_F = descriptor_pb2.FieldDescriptorProto

_BATCHING_FIELDS: list[tuple[str, int, int, str, int]] = [
    # name, number, type, type_name, label
    ("max_batch_size", 1, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", _F.LABEL_OPTIONAL),
    ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", _F.LABEL_OPTIONAL),
    ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", _F.LABEL_OPTIONAL),
    ("num_batch_threads", 4, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", _F.LABEL_OPTIONAL),
    ("thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue", _F.LABEL_OPTIONAL),
    ("allowed_batch_sizes", 6, _F.TYPE_INT64, "", _F.LABEL_REPEATED),
    ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, "", _F.LABEL_OPTIONAL),
    (
        "max_execution_batch_size",
        8,
        _F.TYPE_MESSAGE,
        ".google.protobuf.Int64Value",
        _F.LABEL_OPTIONAL,
    ),
    ("enable_large_batch_splitting", 9, _F.TYPE_BOOL, "", _F.LABEL_OPTIONAL),
]

_SSL_FIELDS: list[tuple[str, int, int, str, int]] = [
    ("server_key", 1, _F.TYPE_STRING, "", _F.LABEL_OPTIONAL),
    ("server_cert", 2, _F.TYPE_STRING, "", _F.LABEL_OPTIONAL),
    ("custom_ca", 3, _F.TYPE_STRING, "", _F.LABEL_OPTIONAL),
    ("client_verify", 4, _F.TYPE_BOOL, "", _F.LABEL_OPTIONAL),
]


def _build() -> tuple[type[Any], type[Any]]:
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="mnist_serving/tf_serving_config_subset.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for message_name, fields in (
        ("BatchingParameters", _BATCHING_FIELDS),
        ("SSLConfig", _SSL_FIELDS),
    ):
        message = file_proto.message_type.add(name=message_name)
        for name, number, field_type, type_name, label in fields:
            field = message.field.add(name=name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name
    pool = descriptor_pool.Default()
    try:
        file_descriptor = pool.FindFileByName(file_proto.name)
    except KeyError:
        pool.Add(file_proto)
        file_descriptor = pool.FindFileByName(file_proto.name)
    messages = file_descriptor.message_types_by_name
    return (
        message_factory.GetMessageClass(messages["BatchingParameters"]),
        message_factory.GetMessageClass(messages["SSLConfig"]),
    )


BatchingParameters, SSLConfig = _build()


def parse_text(message_class: type[Any], text: str) -> Any:
    """Parse a text proto; raises ``text_format.ParseError`` naming the bad line."""
    return text_format.Parse(text, message_class())
