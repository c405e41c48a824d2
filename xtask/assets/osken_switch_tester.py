"""os-ken's OpenFlow switch test tool (os_ken/tests/switch/tester.py, the
suite Ryu's authors wrote) with two additions, for `cargo xtask
conformance`:

- every test's result goes to a JSON-lines file (the CONFORMANCE_RESULTS
  environment variable): the file's description, the test's description,
  "OK" or the tool's own error message;
- the tool waits CONFORMANCE_SETTLE seconds (default 0.3) before it sends a
  test's first packet, after the flows are installed and checked. Open
  vSwitch's userspace datapath answers the barrier before its revalidator
  has replaced the previous test's cached datapath flows, so without the
  pause a packet can meet the old actions. Every target gets the same wait.

The tests themselves, their packets and their checks are the tool's,
unchanged. os-ken 4 has no `osken-manager`, so this file is its own
launcher:

    CONFORMANCE_RESULTS=out.jsonl python3 osken_switch_tester.py \
        --ofp-tcp-listen-port 6653 --test-switch-dir .../of13/match
"""

import json
import os
import sys

# The tester's timeouts only fire with the eventlet hub (os-ken 4.x
# defaults to native threads); it must be chosen before os_ken.lib.hub
# is imported.
os.environ.setdefault("OSKEN_HUB_TYPE", "eventlet")

from os_ken.lib import hub  # noqa: E402

hub.patch(thread=False)

from os_ken import cfg  # noqa: E402
from os_ken import log  # noqa: E402
from os_ken.base import app_manager  # noqa: E402
from os_ken.tests.switch import tester  # noqa: E402

RESULTS = os.environ.get("CONFORMANCE_RESULTS")
SETTLE = float(os.environ.get("CONFORMANCE_SETTLE", "0.3"))


class ConformanceTester(tester.OfTester):
    """The tool's OfTester, recording results and settling before packets."""

    def __init__(self, *args, **kwargs):
        self._file_desc = None
        self._last_error = None
        super().__init__(*args, **kwargs)

    def _test(self, state, *args):
        try:
            return super()._test(state, *args)
        except Exception as err:  # recorded, then handled by the tool
            self._last_error = str(err)
            raise

    def _one_time_packet_send(self, pkt):
        hub.sleep(SETTLE)
        return super()._one_time_packet_send(pkt)

    def _continuous_packet_send(self, pkt):
        hub.sleep(SETTLE)
        return super()._continuous_packet_send(pkt)

    def _test_execute(self, test, description):
        if description:
            self._file_desc = description
        self._last_error = None
        result = super()._test_execute(test, description)
        if RESULTS:
            ok = result == tester.TEST_OK
            line = {
                "file": self._file_desc,
                "test": test.description,
                "ok": ok,
                "error": None if ok else (self._last_error or result),
            }
            with open(RESULTS, "a") as f:
                f.write(json.dumps(line) + "\n")
        return result


if __name__ == "__main__":
    cfg.CONF(args=sys.argv[1:], project="os_ken", version="osken_switch_tester")
    log.init_log()
    app_manager.AppManager.run_apps([os.path.abspath(__file__)])
