//! Aligned text tables for the human output.

pub fn print(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> =
            cells.iter().zip(&width).enumerate().map(|(i, (c, w))| if i == 0 { format!("{:<w$}", c, w = *w) } else { format!("{:>w$}", c, w = *w) }).collect();
        crate::say!("  {}", s.join("  "));
    };
    line(header.iter().map(|s| s.to_string()).collect());
    crate::say!("  {}", width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
    for r in rows {
        line(r.clone());
    }
}

/// Before/after op counts, parameters and FLOPs of a fusion report.
pub fn print_report(r: &crate::FusionReport) {
    let mut kinds: Vec<&String> = r.ops_before.keys().chain(r.ops_after.keys()).collect();
    kinds.sort();
    kinds.dedup();
    let mut rows: Vec<Vec<String>> =
        kinds.iter().map(|k| vec![k.to_string(), r.ops_before.get(*k).unwrap_or(&0).to_string(), r.ops_after.get(*k).unwrap_or(&0).to_string()]).collect();
    rows.push(vec!["parameters".into(), r.params_before.to_string(), r.params_after.to_string()]);
    rows.push(vec!["FLOPs/sample".into(), human(r.flops_before as f64), human(r.flops_after as f64)]);
    print(&["", "before", "after"], &rows);
    if !r.refused.is_empty() {
        crate::say!("\n  refused ({}):", r.refused.len());
        for x in &r.refused {
            crate::say!("    {} [{}]: {}", x.rule, x.nodes.join(", "), x.reason);
        }
    }
    if !r.left.is_empty() {
        // Grouped by op and explanation: real models leave dozens of residual sums.
        let mut groups: std::collections::BTreeMap<(&str, &str), Vec<&str>> = std::collections::BTreeMap::new();
        for l in &r.left {
            // Refusals name their nodes; they are listed above, so group by rule.
            let why = if l.why.starts_with("refused by ") { l.why.split(':').next().unwrap_or(&l.why) } else { l.why.as_str() };
            groups.entry((l.op.as_str(), why)).or_default().push(l.node.as_str());
        }
        crate::say!("\n  left in the deploy graph ({} BN / sum / concat nodes):", r.left.len());
        for ((op, why), nodes) in groups {
            let more = if nodes.len() > 1 { format!(" (and {} more)", nodes.len() - 1) } else { String::new() };
            crate::say!("    {} `{}`{}: {}", op, nodes[0], more, why);
        }
    }
}

/// The ops carried unchanged, by type and reason.
pub fn print_carried(r: &crate::FusionReport) {
    if r.carried.is_empty() {
        return;
    }
    crate::say!("\n  carried through unchanged ({} nodes):", r.carried.iter().map(|c| c.count).sum::<usize>());
    for c in &r.carried {
        crate::say!("    {} x{}: {}", c.op_type, c.count, c.why);
    }
}

pub fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2}G", x / 1e9),
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{}", x),
    }
}
