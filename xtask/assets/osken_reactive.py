"""A minimal reactive OpenFlow 1.3 app for os-ken, doing the work the
DaoliNet controller does for a same-host pair, for `cargo xtask bench
controller`.

For every IPv4 PACKET_IN between two known containers of the same datapath
it sends what daolinet-controller sends: a FLOW_MOD for the forward direction
(in_port, ip, nw_src, nw_dst -> set eth_src=gateway, eth_dst=dst MAC,
output:dst port; idle timeout), one for the reverse direction, and a
PACKET_OUT of the punted frame with the forward actions. Anything else
(unknown container, wrong port, other protocols) gets no answer.

The container table is the JSON printed by `daolinet-loadgen plan`, named
by the OSKEN_REACTIVE_PLAN environment variable.

os-ken 4 no longer ships `osken-manager`, so this file is its own launcher:

    OSKEN_REACTIVE_PLAN=plan.json python3 osken_reactive.py --ofp-tcp-listen-port 6654
"""

import json
import os
import sys

from os_ken.lib import hub

hub.patch(thread=False)

from os_ken import cfg  # noqa: E402
from os_ken import log  # noqa: E402
from os_ken.base import app_manager  # noqa: E402
from os_ken.controller import controller  # noqa: E402,F401  (registers --ofp-tcp-listen-port)
from os_ken.controller import ofp_event  # noqa: E402
from os_ken.controller.handler import MAIN_DISPATCHER, set_ev_cls  # noqa: E402
from os_ken.lib.packet import ipv4, packet  # noqa: E402
from os_ken.ofproto import ofproto_v1_3  # noqa: E402

PRIORITY = 100


class Reactive(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = os.environ.get("OSKEN_REACTIVE_PLAN")
        if not path:
            raise SystemExit("OSKEN_REACTIVE_PLAN must name the plan JSON")
        with open(path) as f:
            plan = json.load(f)
        self.gateway_mac = plan["gateway_mac"]
        self.idle_timeout = int(plan.get("idle_timeout", 10))
        # (dpid, ip) -> (mac, port)
        self.table = {
            (int(c["dpid"]), c["ip"]): (c["mac"], int(c["port"]))
            for c in plan["containers"]
        }
        self.decisions = 0
        self.logger.info("loaded %d containers", len(self.table))

    def _flow(self, dp, in_port, src_ip, dst_ip, dst):
        parser = dp.ofproto_parser
        ofp = dp.ofproto
        match = parser.OFPMatch(
            in_port=in_port, eth_type=0x0800, ipv4_src=src_ip, ipv4_dst=dst_ip
        )
        actions = [
            parser.OFPActionSetField(eth_src=self.gateway_mac),
            parser.OFPActionSetField(eth_dst=dst[0]),
            parser.OFPActionOutput(dst[1]),
        ]
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        mod = parser.OFPFlowMod(
            datapath=dp,
            priority=PRIORITY,
            idle_timeout=self.idle_timeout,
            match=match,
            instructions=inst,
        )
        return mod, actions

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in(self, ev):
        msg = ev.msg
        dp = msg.datapath
        in_port = msg.match["in_port"]
        ip = packet.Packet(msg.data).get_protocol(ipv4.ipv4)
        if ip is None:
            return
        src = self.table.get((dp.id, ip.src))
        dst = self.table.get((dp.id, ip.dst))
        if src is None or dst is None or src[1] != in_port:
            return
        fwd, actions = self._flow(dp, in_port, ip.src, ip.dst, dst)
        rev, _ = self._flow(dp, dst[1], ip.dst, ip.src, src)
        dp.send_msg(fwd)
        dp.send_msg(rev)
        parser = dp.ofproto_parser
        dp.send_msg(
            parser.OFPPacketOut(
                datapath=dp,
                buffer_id=dp.ofproto.OFP_NO_BUFFER,
                in_port=in_port,
                actions=actions,
                data=msg.data,
            )
        )
        self.decisions += 1


if __name__ == "__main__":
    cfg.CONF(args=sys.argv[1:], project="os_ken", version="osken_reactive")
    log.init_log()
    app_manager.AppManager.run_apps([os.path.abspath(__file__)])
