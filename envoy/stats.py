"""The tags Envoy takes out of its stat names, which become Prometheus labels.

Envoy's defaults, except that the front's per-method gRPC stats carry the whole service and
method names (the default extractors cut dotted names into meaningless tokens).
"""

from __future__ import annotations

from typing import Any, Final

# The tags Envoy takes out of its stat names (Prometheus labels), by the names Envoy gives its
# default extractors (each with its default regex), all but the gRPC service and method.
DEFAULT_TAGS: Final[tuple[str, ...]] = (
    "envoy.cluster_name", "envoy.listener_address", "envoy.http_conn_manager_prefix",
    "envoy.http_user_agent", "envoy.virtual_host", "envoy.virtual_cluster", "envoy.route",
    "envoy.rds_route_config", "envoy.scoped_rds_config", "envoy.response_code",
    "envoy.response_code_class", "envoy.worker_id", "envoy.ssl_cipher", "cipher_suite",
    "envoy.ssl_curve", "envoy.ssl_sigalg", "envoy.ssl_version", "envoy.tls_certificate",
    "envoy.xds_resource_name", "envoy.local_http_ratelimit_prefix",
    "envoy.local_network_ratelimit_prefix", "envoy.local_listener_ratelimit_prefix",
    "envoy.ratelimit_prefix", "envoy.connection_limit_prefix", "envoy.rbac_prefix",
    "envoy.rbac_http_prefix", "envoy.rbac_policy_name", "envoy.ext_authz_prefix",
    "envoy.fault_downstream_cluster", "envoy.google_grpc_client_prefix",
    "envoy.proxy_protocol_prefix", "envoy.proxy_protocol_version", "envoy.clientssl_prefix",
    "envoy.tcp_prefix", "envoy.udp_prefix", "envoy.dns_filter_prefix", "envoy.thrift_prefix",
    "envoy.redis_prefix", "envoy.mongo_prefix", "envoy.mongo_cmd", "envoy.mongo_collection",
    "envoy.mongo_callsite", "envoy.dynamo_operation", "envoy.dynamo_table",
    "envoy.dynamo_partition_id",
)
GRPC_SERVICE_TAG: Final = "envoy.grpc_bridge_service"
GRPC_METHOD_TAG: Final = "envoy.grpc_bridge_method"
# grpc_stats names a call's stats cluster.<cluster>.grpc.<service>.<method>.<stat>, where the
# service is dotted (detect.v1.Detector), the method is one token (Detect) and so is the stat
# (total, success, failure, a status code, ...). The first group is what leaves the name,
# the second the tag's value.
GRPC_SERVICE_REGEX: Final = r"^cluster\.[^.]+\.grpc\.((.+)\.)[^.]+\.[^.]+$"
GRPC_METHOD_REGEX: Final = r"^cluster\.[^.]+\.grpc\..+\.(([^.]+)\.)[^.]+$"


def stats_config() -> dict[str, Any]:
    """Envoy's default tags, except that the front's per-method gRPC stats are tagged with the
    whole service and method names.

    Envoy's default extractors take one dot-separated token each for the gRPC service and
    method, so ``/detect.v1.Detector/Detect`` was counted as service ``detect``, method
    ``v1``, in series named ``envoy_cluster_grpc_Detector_Detect_*``: one family per method,
    labels that tell nothing. A default extractor cannot be replaced while the defaults are
    on (Envoy refuses a tag name given twice), so the defaults are named one by one and the
    two gRPC tags get their own regexes: ``envoy_cluster_grpc_total{envoy_grpc_bridge_service=
    "detect.v1.Detector", envoy_grpc_bridge_method="Detect"}``.
    """
    return {
        "use_all_default_tags": False,
        "stats_tags": [
            *({"tag_name": name} for name in DEFAULT_TAGS),
            {"tag_name": GRPC_SERVICE_TAG, "regex": GRPC_SERVICE_REGEX},
            {"tag_name": GRPC_METHOD_TAG, "regex": GRPC_METHOD_REGEX},
        ],
    }
