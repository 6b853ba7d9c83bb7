"""``detect.v1.Operations``: the routing table and model control, for operators.

Thin on purpose: the router knows the groups and does the work; this turns its state into
the API's messages. Envoy lets only operator identities reach it from outside.
"""

from __future__ import annotations

import grpc

from detect.v1 import operations_pb2 as ops

from . import contract
from .errors import ProxyError
from .experiments import Experiments
from .observed import CallObserver, Context
from .router import Router


class OperationsService:
    def __init__(self, router: Router, experiments: Experiments) -> None:
        self._router = router
        self._experiments = experiments

    async def ListGroups(self, request: ops.ListGroupsRequest,
                         context: Context) -> ops.ListGroupsResponse:
        await self._router.refresh()  # as the groups are now, not as last polled
        response = ops.ListGroupsResponse()
        for group in self._router.groups:
            entry = response.groups.add(name=group.name, up=group.up,
                                        models=sorted(group.served), calls=group.calls)
            for replica in group.replicas.values():
                entry.replicas.add(
                    address=replica.address, reachable=replica.reachable, error=replica.error,
                    models=[ops.ModelState(name=m.name, version=m.version, state=m.state,
                                           reason=m.reason) for m in replica.models])
        return response

    async def LoadModel(self, request: ops.ModelControlRequest,
                        context: Context) -> ops.ModelControlResponse:
        model, group = _target(request)
        replicas = await self._router.load(model, group, context.time_remaining())
        return ops.ModelControlResponse(served_by=self._router.served_by(model),
                                        replicas=replicas)

    async def UnloadModel(self, request: ops.ModelControlRequest,
                          context: Context) -> ops.ModelControlResponse:
        model, group = _target(request)
        replicas = await self._router.unload(model, group, context.time_remaining())
        return ops.ModelControlResponse(served_by=self._router.served_by(model),
                                        replicas=replicas)

    async def ListExperiments(self, request: ops.ListExperimentsRequest,
                              context: Context) -> ops.ListExperimentsResponse:
        response = ops.ListExperimentsResponse()
        for experiment in self._experiments.by_model.values():
            shadow = experiment.shadow
            response.experiments.add(
                model=experiment.model, salt=experiment.salt,
                shadow_version=shadow.version if shadow else "",
                shadow_fraction=shadow.fraction if shadow else 0.0,
                shared_fault=experiment.model in self._experiments.shared_breach,
                variants=[ops.ExperimentVariant(
                    name=v.name, version=v.version, weight=v.weight,
                    guarded=self._experiments.guarded.get((experiment.model, v.name), ""))
                    for v in experiment.variants])
        return response

    async def RestoreVariant(self, request: ops.RestoreVariantRequest,
                             context: Context) -> ops.RestoreVariantResponse:
        if not request.model or not request.variant:
            raise ProxyError(grpc.StatusCode.INVALID_ARGUMENT,
                             "name the model and the variant (ListExperiments lists them)")
        return ops.RestoreVariantResponse(
            was_guarded=self._experiments.restore(request.model, request.variant))


def _target(request: ops.ModelControlRequest) -> tuple[str, str]:
    if not request.model or not request.group:
        raise ProxyError(grpc.StatusCode.INVALID_ARGUMENT,
                         "name the model and the group (ListGroups lists the groups)")
    return request.model, request.group


def method_handlers(service: OperationsService, observer: CallObserver) -> grpc.GenericRpcHandler:
    name = contract.OPERATIONS_SERVICE
    return grpc.method_handlers_generic_handler(name, {
        "ListGroups": grpc.unary_unary_rpc_method_handler(
            observer.observe("ListGroups", service.ListGroups, name),
            request_deserializer=ops.ListGroupsRequest.FromString,
            response_serializer=ops.ListGroupsResponse.SerializeToString),
        "LoadModel": grpc.unary_unary_rpc_method_handler(
            observer.observe("LoadModel", service.LoadModel, name),
            request_deserializer=ops.ModelControlRequest.FromString,
            response_serializer=ops.ModelControlResponse.SerializeToString),
        "UnloadModel": grpc.unary_unary_rpc_method_handler(
            observer.observe("UnloadModel", service.UnloadModel, name),
            request_deserializer=ops.ModelControlRequest.FromString,
            response_serializer=ops.ModelControlResponse.SerializeToString),
        "ListExperiments": grpc.unary_unary_rpc_method_handler(
            observer.observe("ListExperiments", service.ListExperiments, name),
            request_deserializer=ops.ListExperimentsRequest.FromString,
            response_serializer=ops.ListExperimentsResponse.SerializeToString),
        "RestoreVariant": grpc.unary_unary_rpc_method_handler(
            observer.observe("RestoreVariant", service.RestoreVariant, name),
            request_deserializer=ops.RestoreVariantRequest.FromString,
            response_serializer=ops.RestoreVariantResponse.SerializeToString),
    })
