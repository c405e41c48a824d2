#!/bin/bash
# A/B of the agent's punt wake-up (issue 19): the agent with `--punt-bell true`
# and `--punt-bell false` alternately, ROUNDS times, each fed N first packets
# (UDP from container A to B, GAP seconds apart, no flow: every one punted)
# with no controller (`--fail-mode secure`: the punts are read, then dropped).
# Prints, per run, from the agent's own `daolinet_agent::latency` trace: the
# median and 90th percentile of punt_to_read_ns (the BPF program's
# bpf_ktime_get_ns to the agent reading the record) and the median of
# woke_to_read_ns (the return of epoll_wait to it). Root; namespaces named punt<PID>{h,a,b} and a
# bpffs under /tmp, removed at exit.
#
#   cargo build --release -p daolinet-agent --bin daolinet-agent
#   sudo daolinet-agent/examples/punt_bell_ab.sh   # BIN=, N=300, ROUNDS=3, GAP=0.005
#
# See also examples/punt_wakeup.rs (the wake-up alone, by transport).
set -u
BIN=${BIN:-$(dirname "$0")/../../target/release/daolinet-agent}
N=${N:-300}; ROUNDS=${ROUNDS:-3}; GAP=${GAP:-0.005}
T=punt$$
H=${T}h; A=${T}a; B=${T}b
cleanup() { ip netns del $H 2>/dev/null; ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null; umount /tmp/$T-bpffs 2>/dev/null; rm -rf /tmp/$T-*; }
trap cleanup EXIT
for n in $H $A $B; do ip netns add $n; ip -n $n link set lo up; done
ip -n $H link add up0 type veth peer name up0p; ip -n $H link set up0 up; ip -n $H link set up0p up
ip -n $H link add pa type veth peer name eth0 netns $A
ip -n $H link add pb type veth peer name eth0 netns $B
ip -n $A link set eth0 address 02:00:00:00:00:0a; ip -n $B link set eth0 address 02:00:00:00:00:0b
ip -n $A addr add 10.1.0.2/24 dev eth0; ip -n $B addr add 10.1.0.3/24 dev eth0
ip -n $A link set eth0 up; ip -n $B link set eth0 up; ip -n $H link set pa up; ip -n $H link set pb up
ip -n $A neigh add 10.1.0.3 lladdr 02:00:00:00:00:0b dev eth0
mkdir -p /tmp/$T-bpffs && mount -t bpf bpf /tmp/$T-bpffs
for r in $(seq $ROUNDS); do
  for bell in true false; do
    log=/tmp/$T-$bell-$r.log
    ip netns exec $H env RUST_LOG=warn,daolinet_agent::latency=trace NO_COLOR=1 $BIN --bpffs /tmp/$T-bpffs --state-dir /tmp/$T-state run --uplink up0 --port pa=1 --port pb=2 --fail-mode secure --packet-in-rate 0 --punt-bell $bell 2>$log >/dev/null &
    pid=$!
    sleep 2
    ip netns exec $A python3 -c "
import socket,time
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
for i in range($N):
    s.sendto(b'x'*18,('10.1.0.3',20000+i)); time.sleep($GAP)
"
    sleep 0.3
    kill -INT $pid; wait $pid
    grep -o 'punt_to_read_ns=[0-9]*' $log | cut -d= -f2 | sort -n | awk -v b=$bell -v r=$r '{a[NR]=$1} END {printf "round %d bell=%-5s n=%d punt->read p50 %.1f us p90 %.1f us\n", r, b, NR, a[int(NR*0.5)+1]/1000, a[int(NR*0.9)+1]/1000}'
    grep -o 'woke_to_read_ns=[0-9]*' $log | cut -d= -f2 | sort -n | awk '{a[NR]=$1} END {printf "   woke->read p50 %.1f us\n", a[int(NR*0.5)+1]/1000}'
  done
done
uptime
