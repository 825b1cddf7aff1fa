//! The documentation against the code: the configuration reference
//! (`docs/configuration.md`) names every field the parser accepts and no
//! other, its examples parse, every environment variable the functions
//! read is documented, and every link between the pages leads somewhere.
//! No stack needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The pages a reader is sent to: README, ARCHITECTURE and docs/.
fn pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_owned(), "ARCHITECTURE.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// A configuration that parses, with `{source}`, `{credentials}`, … marking
/// where one level's extra key goes (empty for none).
const MINIMAL: &str = "\
source: { url: 'http://127.0.0.1:5001', credentials: { password_env: P, username: u {credentials} } {source} }
webhook: { auth_values_env: RELAY_WEBHOOK_AUTH {webhook} }
registries: [ { name: r, url: 'http://127.0.0.1:5002' {registries} } ]
rules:
  - name: x
    filters: { name: '**', tag: { pattern: '**' {tag} }, label: { values: [a] {label} } {filters} }
    destination: { registry: r {destination} }
    {rules}
worker: { blob_concurrency: 3 {worker} }
secrets: { ttl_seconds: 300 {secrets} }
{top}
";

/// Each level of the configuration: the path its fields are documented
/// under, and the marker in [`MINIMAL`] where a key of that level goes.
const LEVELS: &[(&str, &str)] = &[
    ("", "top"),
    ("source", "source"),
    ("credentials", "credentials"),
    ("webhook", "webhook"),
    ("registries[]", "registries"),
    ("rules[]", "rules"),
    ("rules[].filters", "filters"),
    ("rules[].filters.tag", "tag"),
    ("rules[].filters.label", "label"),
    ("rules[].destination", "destination"),
    ("worker", "worker"),
    ("secrets", "secrets"),
];

const UNKNOWN: &str = "zz_not_a_field";

/// `MINIMAL` with an unknown key at `level` (or none).
fn minimal_with_unknown_at(level: Option<&str>) -> String {
    let mut text = MINIMAL.to_owned();
    for (_, marker) in LEVELS {
        let key = if Some(*marker) == level {
            match *marker {
                "top" => format!("{UNKNOWN}: 1"),
                "rules" => format!("{UNKNOWN}: 1"),
                _ => format!(", {UNKNOWN}: 1"),
            }
        } else {
            String::new()
        };
        text = text.replace(&format!("{{{marker}}}"), &key);
    }
    text
}

/// The fields the parser accepts at `marker`'s level, as serde lists them
/// when it refuses an unknown one ("unknown field `x`, expected one of
/// `a`, `b`").
fn accepted_fields(marker: &str) -> BTreeSet<String> {
    let err = relay::Config::parse(&minimal_with_unknown_at(Some(marker)))
        .err()
        .unwrap_or_else(|| panic!("an unknown field at {marker} was accepted"))
        .to_string();
    let expected = err
        .split_once(&format!("unknown field `{UNKNOWN}`, expected"))
        .unwrap_or_else(|| panic!("at {marker}, not an unknown-field error: {err}"))
        .1;
    // The list ends where serde's message does (a location may follow).
    let expected = expected.split(" at line ").next().unwrap();
    expected.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// The cells of a Markdown table row.
fn cells(row: &str) -> Vec<String> {
    // `\|` inside a cell is a literal bar, not a separator.
    row.replace("\\|", "\u{0}")
        .trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.replace('\u{0}', "|").trim().to_owned())
        .collect()
}

/// The rows of every table in `text` whose first header cell is `header`,
/// as (first cell, the row).
fn table_rows<'a>(text: &'a str, header: &str) -> Vec<(String, &'a str)> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with('|') {
            inside = false;
            continue;
        }
        let first = cells(line).into_iter().next().unwrap_or_default();
        if !inside {
            inside = first == header;
            continue;
        }
        if first.starts_with("---") {
            continue;
        }
        rows.push((first, line));
    }
    rows
}

/// The code spans of a cell: `a` / `b` documents both a and b.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Every field path the configuration reference documents (a table whose
/// first column is `field`), with the row that documents it.
fn documented_fields() -> BTreeMap<String, String> {
    let text = read("docs/configuration.md");
    let mut fields = BTreeMap::new();
    for (first, row) in table_rows(&text, "field") {
        let spans = code_spans(&first);
        assert!(!spans.is_empty(), "a reference row without a field: {row}");
        for path in spans {
            assert!(fields.insert(path.clone(), row.to_owned()).is_none(), "{path} is documented twice");
        }
    }
    fields
}

/// The documented children of `level` (`source` → `url`, `credentials`, …).
fn documented_children(fields: &BTreeMap<String, String>, level: &str) -> BTreeSet<String> {
    fields
        .keys()
        .filter_map(|path| match level {
            "" => Some(path.as_str()),
            _ => path.strip_prefix(level).and_then(|rest| rest.strip_prefix('.')),
        })
        .filter(|child| !child.contains('.'))
        .map(|child| child.trim_end_matches("[]").to_owned())
        .collect()
}

/// At every level of the configuration, the reference documents exactly
/// the fields the parser accepts: none missing, none stale.
#[test]
fn the_configuration_reference_names_every_field_and_no_other() {
    relay::Config::parse(&minimal_with_unknown_at(None)).expect("the minimal configuration parses");
    let fields = documented_fields();
    let mut problems = Vec::new();
    for (level, marker) in LEVELS {
        let accepted = accepted_fields(marker);
        assert!(!accepted.is_empty(), "{marker}");
        let documented = documented_children(&fields, level);
        let at = if level.is_empty() { "the top level" } else { level };
        for missing in accepted.difference(&documented) {
            problems.push(format!("{at}: `{missing}` is accepted but not in docs/configuration.md"));
        }
        for stale in documented.difference(&accepted) {
            problems.push(format!("{at}: `{stale}` is documented but the parser refuses it"));
        }
    }
    // Every documented path belongs to a level the loop above checked.
    for path in fields.keys() {
        let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
        if !LEVELS.iter().any(|(level, _)| *level == parent) {
            problems.push(format!("`{path}` is under no level of the configuration"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The fenced blocks of a page in the given language.
fn fenced_blocks(text: &str, language: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let fence = line.trim_start();
        if let Some(info) = fence.strip_prefix("```") {
            let indent = line.len() - fence.len();
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.trim_start().starts_with("```")).collect();
            if info.trim() == language {
                blocks.push(body.iter().map(|l| l.get(indent..).unwrap_or("")).collect::<Vec<_>>().join("\n"));
            }
        }
    }
    blocks
}

/// Every YAML example on the pages parses with the functions' own parser:
/// a whole configuration as it is, a `registries:` excerpt with a source
/// and webhook around it.
#[test]
fn every_configuration_example_parses() {
    let mut checked = 0;
    for page in pages() {
        for block in fenced_blocks(&read(&page), "yaml") {
            let whole = if block.starts_with("source:") {
                block.clone()
            } else if block.starts_with("registries:") {
                format!(
                    "source: {{ url: 'https://harbor.example.com' }}\nwebhook: {{ auth_values_env: AUTH }}\n{block}"
                )
            } else {
                panic!("{page}: a YAML block that is not a configuration:\n{block}")
            };
            if let Err(e) = relay::Config::parse(&whole) {
                panic!("{page}: an example does not parse: {e}\n{block}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked} examples");
    for example in ["examples/config.yaml", "examples/config.lambda.yaml"] {
        relay::Config::parse(&read(example)).unwrap_or_else(|e| panic!("{example}: {e}"));
    }
}

/// The source files of the functions, the library and the CLI, without
/// their unit tests, integration tests and benches.
fn production_sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !["tests", "benches", "target"].contains(&name.as_str()) {
                production_sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default().to_owned();
            out.push((path, code));
        }
    }
}

/// The `RELAY_*` names quoted in `text`.
fn relay_variables(text: &str) -> BTreeSet<String> {
    text.match_indices("RELAY_")
        .filter_map(|(i, _)| {
            let name: String =
                text[i..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
            let quoted = text[..i].ends_with('"') && text[i + name.len()..].starts_with('"');
            quoted.then_some(name)
        })
        .collect()
}

/// Every `RELAY_*` variable the functions, the library or the CLI read,
/// and every one the template sets, has a row in the configuration
/// page's table of environment variables; and no row names one nothing
/// reads.
#[test]
fn every_environment_variable_is_documented() {
    let mut sources = Vec::new();
    for dir in ["functions", "shared", "cli/src"] {
        production_sources(&root().join(dir), &mut sources);
    }
    let mut read_by_code = BTreeSet::new();
    for (_, code) in &sources {
        read_by_code.extend(relay_variables(code));
    }
    let template = read("infra/template.yaml");
    let set_by_template: BTreeSet<String> = template
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, _)| k.to_owned())
        .filter(|k| k.starts_with("RELAY_"))
        .collect();
    assert!(read_by_code.contains("RELAY_CONFIG") && set_by_template.contains("RELAY_QUEUE_URL"));
    let page = read("docs/configuration.md");
    let documented: BTreeSet<String> = table_rows(&page, "variable")
        .into_iter()
        .flat_map(|(first, _)| code_spans(&first))
        .filter(|v| v.starts_with("RELAY_"))
        .collect();
    let wanted: BTreeSet<String> = read_by_code.union(&set_by_template).cloned().collect();
    let missing: Vec<_> = wanted.difference(&documented).collect();
    assert!(missing.is_empty(), "read or set but not in docs/configuration.md: {missing:?}");
    let stale: Vec<_> = documented.difference(&wanted).collect();
    assert!(stale.is_empty(), "documented but read by nothing: {stale:?}");
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.insert(slug(line.trim_start_matches('#')));
        }
    }
    anchors
}

/// Every relative link of README, ARCHITECTURE and docs/ names a file
/// that exists, and an anchor a heading of that file makes.
#[test]
fn every_link_between_the_pages_resolves() {
    let mut broken = Vec::new();
    let mut links = 0;
    for page in pages() {
        let text = read(&page);
        let dir = Path::new(&page).parent().unwrap().to_path_buf();
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            links += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file_path = if file.is_empty() { PathBuf::from(&page) } else { dir.join(file) };
            let full = root().join(&file_path);
            if !full.exists() {
                broken.push(format!("{page}: {target} (no {})", file_path.display()));
                continue;
            }
            if !anchor.is_empty() {
                let linked = std::fs::read_to_string(&full).unwrap();
                if !anchors(&linked).contains(anchor) {
                    broken.push(format!("{page}: {target} (no heading makes #{anchor})"));
                }
            }
        }
    }
    assert!(links > 20, "{links} links");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The README stays a front page: what the project is, the two commands,
/// the deploy in at most ten steps, and a link to each page of docs/.
#[test]
fn the_readme_stays_short_and_links_every_page() {
    let readme = read("README.md");
    assert!(readme.lines().count() < 250, "README.md has {} lines", readme.lines().count());
    for command in ["make demo", "make test", "make deploy PARAMS=params.env CONFIG=config.yaml"] {
        assert!(readme.contains(command), "README.md lacks {command}");
    }
    for page in pages().iter().filter(|p| p.starts_with("docs/")) {
        assert!(readme.contains(&format!("]({page}")), "README.md does not link {page}");
    }
    // The deploy: numbered steps 1, 2, … of at most ten, each with its command.
    let deploy = readme.split("\n## Deploy to AWS").nth(1).expect("README.md has a Deploy to AWS section");
    let deploy = deploy.split("\n## ").next().unwrap();
    let steps: Vec<&str> =
        deploy.split('\n').filter(|l| l.split_once(". **").is_some_and(|(n, _)| n.parse::<u32>().is_ok())).collect();
    assert!((1..=10).contains(&steps.len()), "{} deploy steps: {steps:?}", steps.len());
    for (i, step) in steps.iter().enumerate() {
        assert!(step.starts_with(&format!("{}. **", i + 1)), "step {} reads {step:?}", i + 1);
    }
    assert_eq!(deploy.matches("```sh").count(), steps.len(), "one block of commands per step");
}
