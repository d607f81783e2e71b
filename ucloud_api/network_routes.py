"""The ``/network`` endpoints (issue 7). Like :mod:`.routes`: parse, call one function of
:mod:`.networks`, serialise; errors are raised and mapped by :mod:`.errors`."""

from __future__ import annotations

from flask import Blueprint, Response

from . import networks
from .routes import caller, ctx, no_query, parse_body, parse_optional_body, reply
from .schemas import CreateNetwork, Credentials, DeleteNetwork, NetworkVM

network = Blueprint("network", __name__, url_prefix="/network")


@network.post("/create")
def create_network() -> Response:
    no_query()
    body = parse_body(CreateNetwork)
    networks.check_label(body.network)
    networks.check_prefix("ipv6_prefix", body.ipv6_prefix, 6)
    networks.check_prefix("ipv4_subnet", body.ipv4_subnet, 4)
    user = caller(body)
    net = networks.create_network(ctx().store, user.owner, body.network,
                                  ipv6_prefix=body.ipv6_prefix, ipv4_subnet=body.ipv4_subnet)
    return reply({"id": net.id, "name": net.name, "vni": net.vni}, 201)


@network.get("/list")
def list_networks() -> Response:
    no_query()
    user = caller(parse_optional_body(Credentials))
    return reply({"networks": networks.list_networks(ctx().store, user.owner)})


def _nic_change(change: networks.Attachment) -> Response:
    return reply({"vmid": change.vm.id, "network": change.network.id, "mac": change.mac,
                  "status": change.vm.status.value}, 202)


@network.post("/attach")
def attach() -> Response:
    no_query()
    body = parse_body(NetworkVM)
    user = caller(body)
    return _nic_change(networks.attach(ctx().store, user.owner, body.vmid, body.network))


@network.post("/detach")
def detach() -> Response:
    no_query()
    body = parse_body(NetworkVM)
    user = caller(body)
    return _nic_change(networks.detach(ctx().store, user.owner, body.vmid, body.network))


@network.post("/delete")
def delete() -> Response:
    no_query()
    body = parse_body(DeleteNetwork)
    user = caller(body)
    return reply({"id": networks.delete_network(ctx().store, user.owner, body.network), "status": "DELETED"}, 202)
