//! Draws a [`View`] with ratatui: the cluster's throughput and latency on top, one row per
//! node below.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};

use super::model::{Percentiles, View};

pub fn draw(frame: &mut Frame, view: &View, title: &str) {
    let down = down_lines(view);
    let [summary, nodes, why, help] = Layout::vertical([
        Constraint::Length(7),
        Constraint::Min(4),
        Constraint::Length(down.len() as u16),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(summary_paragraph(view, title), summary);
    frame.render_widget(node_table(view), nodes);
    frame.render_widget(Paragraph::new(down), why);
    frame.render_widget(Paragraph::new("q: quit"), help);
}

/// Why each endpoint that is DOWN did not answer: `NAME ADDR: error`.
fn down_lines(view: &View) -> Vec<Line<'static>> {
    view.nodes
        .iter()
        .filter_map(|node| {
            let error = node.error.as_ref()?;
            Some(Line::styled(format!("{} {}: {error}", node.name, node.addr), Style::new().fg(Color::Red)))
        })
        .collect()
}

fn summary_paragraph<'a>(view: &View, title: &'a str) -> Paragraph<'a> {
    let c = &view.coordinator;
    let lines = if !c.reachable {
        vec![Line::styled("coordinator metrics unreachable", Style::new().fg(Color::Red))]
    } else {
        let aborts = if c.aborts.is_empty() {
            "none".to_string()
        } else {
            let unit = if view.interval_s.is_some() { "/s" } else { "" };
            c.aborts
                .iter()
                .map(|(reason, value)| format!("{reason} {}{unit}", number(*value)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            Line::from(format!(
                "throughput  {} commits/s   aborts {}/s   busy {}/s   committed {}",
                per_s(c.committed_per_s),
                per_s(c.aborted_per_s),
                per_s(c.busy_per_s),
                number(c.committed_total),
            )),
            Line::from(format!("in flight   {}   coordinator epoch {}", number(c.in_flight), number(c.epoch))),
            Line::from(format!("end-to-end  {}", latency(c.transaction))),
            Line::from(format!("prepare     {}   commit round {}", latency(c.prepare_round), latency(c.commit_round))),
            Line::from(format!("aborts by   {aborts}")),
        ]
    };
    Paragraph::new(lines).block(Block::new().borders(Borders::ALL).title(title))
}

fn node_table(view: &View) -> Table<'static> {
    let header = [
        "node",
        "role",
        "metrics",
        "link",
        "in doubt",
        "prepared",
        "log sync p50",
        "p99",
        "fsync p99",
        "group",
        "records/s",
    ];
    let rows = view.nodes.iter().map(|node| {
        let (link, link_style) = match node.linked {
            Some(false) => ("lost", Style::new().fg(Color::Yellow)),
            Some(true) => ("up", Style::new()),
            None => ("-", Style::new()),
        };
        let endpoint = match &node.error {
            Some(_) => Line::styled("DOWN", Style::new().fg(Color::Red)),
            None => Line::from(node.addr.clone()),
        };
        let in_doubt_style =
            if node.in_doubt.unwrap_or(0.0) > 0.0 { Style::new().fg(Color::Yellow) } else { Style::new() };
        Row::new(vec![
            node.name.clone().into(),
            node.role.clone().into(),
            endpoint,
            Line::styled(link, link_style),
            Line::styled(optional(node.in_doubt), in_doubt_style),
            optional(node.prepared).into(),
            seconds(node.log_sync.p50).into(),
            seconds(node.log_sync.p99).into(),
            seconds(node.fsync.p99).into(),
            node.group_records.map_or("-".to_string(), |g| format!("{g:.1}")).into(),
            per_s(node.records_per_s).into(),
        ])
    });
    let widths = [4, 11, 21, 4, 8, 8, 12, 9, 9, 6, 9].map(Constraint::Length);
    Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::new().borders(Borders::ALL).title("nodes"))
}

fn latency(p: Percentiles) -> String {
    format!("p50 {:>9}  p99 {:>9}", seconds(p.p50), seconds(p.p99))
}

fn seconds(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0} µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.2} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

fn per_s(value: Option<f64>) -> String {
    value.map_or("-".into(), number)
}

fn optional(value: Option<f64>) -> String {
    value.map_or("-".into(), number)
}

fn number(value: f64) -> String {
    // An empty sum (a metric the node does not serve) is -0.0: show it as 0.
    let value = value + 0.0;
    if value >= 10_000.0 { format!("{:.1}k", value / 1000.0) } else { format!("{value:.0}") }
}
