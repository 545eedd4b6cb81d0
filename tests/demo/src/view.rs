//! The live terminal view: one screen per second with power against cap per
//! policy and the clock of every GPU a policy holds.

use std::fmt::Write as _;

use crate::samples::{GpuPoint, PolicyPoint};

/// Renders one frame. `ansi` clears the screen first (interactive terminals);
/// otherwise frames are separated by a rule, for logs.
pub fn frame(
    t: f64,
    policies: &[PolicyPoint],
    gpus: &[GpuPoint],
    notes: &[String],
    ansi: bool,
) -> String {
    let mut out = String::new();
    if ansi {
        out.push_str("\x1b[2J\x1b[H");
    } else {
        out.push_str("----\n");
    }
    let _ = writeln!(out, "Climatik demo   t = {t:>5.0} s");
    let _ = writeln!(
        out,
        "{:<34} {:>8} {:>8} {:>9} {:>7}  capping",
        "policy", "cap W", "power W", "status W", "% cap"
    );
    for p in policies {
        let reported = p
            .reported_watts
            .map(|w| format!("{w:.0}"))
            .unwrap_or_else(|| "-".into());
        let percent = 100.0 * p.power_watts / p.cap_watts.max(1.0);
        let _ = writeln!(
            out,
            "{:<34} {:>8.0} {:>8.0} {:>9} {:>6.0}%  {} {}",
            p.policy,
            p.cap_watts,
            p.power_watts,
            reported,
            percent,
            if p.capping { "yes" } else { "no " },
            bar(percent),
        );
    }
    let _ = writeln!(
        out,
        "\n{:<14} {:<16} {:<30} {:>8} {:>8}",
        "node", "gpu", "policy", "MHz", "W"
    );
    for g in gpus.iter().filter(|g| g.policy.is_some()) {
        let clock = g
            .clock_mhz
            .map(|c| format!("{c:.0}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<14} {:<16} {:<30} {:>8} {:>8.0}",
            g.node,
            g.uuid.get(..16).unwrap_or(&g.uuid),
            g.policy.as_deref().unwrap_or(""),
            clock,
            g.power_watts
        );
    }
    for note in notes {
        let _ = writeln!(out, "* {note}");
    }
    out
}

/// `[#######---|  ]`: power as a share of the cap, the cap at the bar.
fn bar(percent: f64) -> String {
    let width = 30.0;
    let filled = ((percent / 120.0) * width).clamp(0.0, width) as usize;
    let cap_at = ((100.0 / 120.0) * width) as usize;
    (0..width as usize)
        .map(|i| match (i < filled, i == cap_at) {
            (_, true) => '|',
            (true, false) => '#',
            (false, false) => ' ',
        })
        .collect::<String>()
}
