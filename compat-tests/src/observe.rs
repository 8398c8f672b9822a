//! Observation lines: parsing a program's stdout into named cases, comparing
//! two runs case by case, and rendering readable per-case diffs.
//!
//! A line `name: text` belongs to case `name` (`[A-Za-z0-9_.-]+`); a case
//! may print many lines. Lines starting with `#` are meta lines, kept apart
//! and never compared. Anything else is collected under [`UNSTRUCTURED`].

use std::collections::HashMap;
use std::fmt::Write as _;

/// Pseudo-case for lines that do not follow the `name: text` format.
pub const UNSTRUCTURED: &str = "(unstructured)";

/// Pseudo-case holding the process exit status.
pub const EXIT_STATUS: &str = "(exit status)";

/// The parsed stdout of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observations {
    /// Cases in order of first appearance, each with its lines (without the
    /// `name: ` prefix).
    pub cases: Vec<(String, Vec<String>)>,
    /// Meta lines (`#...`), in order.
    pub meta: Vec<String>,
    /// For each meta line, the case of the next observation line (the case
    /// an exec'd child prints under), if any.
    pub meta_context: Vec<Option<String>>,
}

impl Observations {
    /// Parse a program's stdout.
    pub fn parse(stdout: &str) -> Self {
        let mut obs = Observations::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut pending_meta = 0;
        for line in stdout.lines() {
            if line.starts_with('#') {
                obs.meta.push(line.to_string());
                obs.meta_context.push(None);
                pending_meta += 1;
                continue;
            }
            let (name, text) = match split_case(line) {
                Some((n, t)) => (n, t),
                None => (UNSTRUCTURED, line),
            };
            let len = obs.meta_context.len();
            for ctx in &mut obs.meta_context[len - pending_meta..] {
                *ctx = Some(name.to_string());
            }
            pending_meta = 0;
            let i = *index.entry(name.to_string()).or_insert_with(|| {
                obs.cases.push((name.to_string(), Vec::new()));
                obs.cases.len() - 1
            });
            obs.cases[i].1.push(text.to_string());
        }
        obs
    }

    /// Add a pseudo-case (e.g. the exit status) so it is compared too.
    pub fn push_case(&mut self, name: &str, lines: Vec<String>) {
        self.cases.push((name.to_string(), lines));
    }

    /// Lines of one case, if present.
    pub fn case(&self, name: &str) -> Option<&[String]> {
        self.cases.iter().find(|(n, _)| n == name).map(|(_, l)| l.as_slice())
    }

    /// Names of the real cases (pseudo-cases excluded).
    pub fn case_names(&self) -> impl Iterator<Item = &str> {
        self.cases.iter().map(|(n, _)| n.as_str()).filter(|n| !n.starts_with('('))
    }

    /// Values of the `#shim=` meta lines, each with the case printed next
    /// (for an exec'd child, the case it reports under).
    pub fn shim_flags(&self) -> Vec<(String, Option<String>)> {
        self.meta
            .iter()
            .zip(&self.meta_context)
            .filter_map(|(m, ctx)| Some((m.strip_prefix("#shim=")?.trim().to_string(), ctx.clone())))
            .collect()
    }
}

impl Observations {
    /// Values of the `#fstype=` meta lines (the hex `f_type` of `statfs("mnt")` that the
    /// `vsa_*` programs print), lower-case, without a `0x` prefix.
    pub fn fstypes(&self) -> Vec<String> {
        self.meta
            .iter()
            .filter_map(|m| m.strip_prefix("#fstype="))
            .map(|v| v.trim().trim_start_matches("0x").to_ascii_lowercase())
            .collect()
    }
}

fn split_case(line: &str) -> Option<(&str, &str)> {
    let (name, text) = line.split_once(": ")?;
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    ok.then_some((name, text))
}

/// How one case differs between a reference run and a run under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseDiff {
    /// Present in the reference run only.
    Missing { case: String, expected: Vec<String> },
    /// Present in the run under test only.
    Extra { case: String, actual: Vec<String> },
    /// Present in both with different lines.
    Changed { case: String, expected: Vec<String>, actual: Vec<String> },
}

impl CaseDiff {
    /// The case's name.
    pub fn case(&self) -> &str {
        match self {
            CaseDiff::Missing { case, .. }
            | CaseDiff::Extra { case, .. }
            | CaseDiff::Changed { case, .. } => case,
        }
    }

    /// A readable rendering: `-` lines only in `left_label`'s run, `+` lines
    /// only in `right_label`'s, and two-space-indented common lines.
    pub fn render(&self, left_label: &str, right_label: &str) -> String {
        let mut s = String::new();
        match self {
            CaseDiff::Missing { case, expected } => {
                let _ = writeln!(s, "case {case}: missing under {right_label}");
                for l in expected {
                    let _ = writeln!(s, "  - {l}");
                }
            }
            CaseDiff::Extra { case, actual } => {
                let _ = writeln!(s, "case {case}: only under {right_label} (not {left_label})");
                for l in actual {
                    let _ = writeln!(s, "  + {l}");
                }
            }
            CaseDiff::Changed { case, expected, actual } => {
                let _ = writeln!(s, "case {case}: differs (- {left_label}, + {right_label})");
                for (tag, l) in line_diff(expected, actual) {
                    let _ = writeln!(s, "  {tag} {l}");
                }
            }
        }
        s
    }
}

/// Compare two runs case by case; cases in `expected`'s order, then extras.
pub fn compare(expected: &Observations, actual: &Observations) -> Vec<CaseDiff> {
    let mut diffs = Vec::new();
    for (name, lines) in &expected.cases {
        match actual.case(name) {
            None => diffs.push(CaseDiff::Missing { case: name.clone(), expected: lines.clone() }),
            Some(other) if other != lines.as_slice() => diffs.push(CaseDiff::Changed {
                case: name.clone(),
                expected: lines.clone(),
                actual: other.to_vec(),
            }),
            Some(_) => {}
        }
    }
    for (name, lines) in &actual.cases {
        if expected.case(name).is_none() {
            diffs.push(CaseDiff::Extra { case: name.clone(), actual: lines.clone() });
        }
    }
    diffs
}

/// A minimal LCS line diff: (' ', common), ('-', left only), ('+', right only).
pub fn line_diff<'a>(a: &'a [String], b: &'a [String]) -> Vec<(char, &'a str)> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j] = LCS length of a[i..] and b[j..]
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n.max(m));
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((' ', a[i].as_str()));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(('+', b[j].as_str()));
            j += 1;
        } else {
            out.push(('-', a[i].as_str()));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_cases_meta_and_unstructured() {
        let o = Observations::parse("#shim=0\na: 1\nb: x: y\na: 2\nno colon here\n#shim=1\n");
        assert_eq!(o.meta, v(&["#shim=0", "#shim=1"]));
        assert_eq!(o.case("a"), Some(&v(&["1", "2"])[..]));
        assert_eq!(o.case("b"), Some(&v(&["x: y"])[..]));
        assert_eq!(o.case(UNSTRUCTURED), Some(&v(&["no colon here"])[..]));
        assert_eq!(o.case_names().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(o.shim_flags(), vec![("0".to_string(), Some("a".to_string())), ("1".to_string(), None)]);
        let f = Observations::parse("#shim=1\n#fstype=0x4152524B\nx: 1\n#fstype=ef53\n");
        assert_eq!(f.fstypes(), v(&["4152524b", "ef53"]));
    }

    #[test]
    fn case_names_must_be_plain() {
        let o = Observations::parse("not a case: text\nok_case-1.x: text\n");
        assert_eq!(o.case_names().collect::<Vec<_>>(), vec!["ok_case-1.x"]);
    }

    #[test]
    fn compare_reports_missing_extra_and_changed() {
        let a = Observations::parse("x: 1\ny: 2\nz: 3\n");
        let b = Observations::parse("x: 1\ny: 20\nw: 4\n");
        let d = compare(&a, &b);
        let names: Vec<&str> = d.iter().map(CaseDiff::case).collect();
        assert_eq!(names, vec!["y", "z", "w"]);
        assert!(matches!(d[0], CaseDiff::Changed { .. }));
        assert!(matches!(d[1], CaseDiff::Missing { .. }));
        assert!(matches!(d[2], CaseDiff::Extra { .. }));
        assert!(compare(&a, &a).is_empty());
    }

    #[test]
    fn line_diff_marks_changes() {
        let a = v(&["same", "old", "tail"]);
        let b = v(&["same", "new", "tail", "more"]);
        let d = line_diff(&a, &b);
        assert_eq!(d, vec![(' ', "same"), ('+', "new"), ('-', "old"), (' ', "tail"), ('+', "more")]);
        let r = CaseDiff::Changed { case: "c".into(), expected: a, actual: b }.render("native", "shim");
        assert!(r.contains("  - old\n") && r.contains("  + new\n"), "{r}");
    }
}
