//! Fuzz the flow-syntax parser: never a panic, and whatever parses displays
//! to text that parses back to the same flow.
#![no_main]

use daolinet_openflow::FlowMod;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(fm) = s.parse::<FlowMod>() {
        let text = fm.to_string();
        let back: FlowMod = text
            .parse()
            .unwrap_or_else(|e| panic!("display output {text:?} does not parse: {e}"));
        assert_eq!(back, fm, "{text}");
    }
});
