"""Model state as TF Serving's protos (``SignatureDefMap``, ``ModelVersionStatus``), shared by
the gRPC and REST transports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from contract.protos import get_model_metadata_pb2, get_model_status_pb2, meta_graph_pb2, status_pb2
from serving.model.versions import ServableVersion, VersionState
from serving.runtimes import Signature
from serving.transport.tensor_codec import numpy_to_dtype_enum, shape_proto


def signature_def_map(
    signatures: Mapping[str, Signature],
) -> get_model_metadata_pb2.SignatureDefMap:
    """``SignatureDefMap`` for a loaded version's signatures."""
    result = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in signatures.items():
        signature_def = result.signature_def[name]
        signature_def.method_name = signature.method_name
        for target, specs in (
            (signature_def.inputs, signature.inputs),
            (signature_def.outputs, signature.outputs),
        ):
            for key, spec in specs.items():
                target[key].CopyFrom(
                    meta_graph_pb2.TensorInfo(
                        name=spec.tensor_name or key,
                        dtype=numpy_to_dtype_enum(spec.dtype),
                        tensor_shape=shape_proto(spec.shape),
                    )
                )
    return result


def version_statuses(
    versions: Sequence[ServableVersion],
) -> list[get_model_status_pb2.ModelVersionStatus]:
    """``ModelVersionStatus`` entries of versions (``PredictionService.status``)."""
    statuses = []
    for v in versions:
        state = VersionState.START if v.state == VersionState.UNKNOWN else v.state
        entry = get_model_status_pb2.ModelVersionStatus(
            version=v.version, state=int(state), status=status_pb2.StatusProto()
        )
        if v.error is not None:
            entry.status.error_code = v.error.code.value[0]
            entry.status.error_message = v.error.message
        statuses.append(entry)
    return statuses
