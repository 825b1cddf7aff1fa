//! Harbor's glob matching, exactly: a port of `Match` from
//! `github.com/bmatcuk/doublestar` v1.3.4, the version Harbor pins in its
//! `src/go.mod` and calls for replication name and tag filters
//! (`src/pkg/reg/util/pattern.go`, where an empty pattern matches all).
//!
//! Why a port and not a glob crate: the maintained Rust crates (globset,
//! glob, wildmatch) follow shell or gitignore conventions, and on
//! ordinary rule patterns they decide differently from Harbor, so the same
//! rule would replicate other artifacts here than in Harbor:
//! - `[!n]` is the set of `!` and `n` in doublestar v1; only `[^n]`
//!   negates (`library/[!n]ginx` selects `library/nginx`);
//! - an alternative may be empty (`{,v*}` also matches `""`, which is how
//!   Harbor matches an untagged artifact);
//! - `**` is special only as a whole path component (`abc**` does not
//!   cross `/`), `*` never crosses `/`;
//! - `\` escapes in patterns and classes; `[]a]` and `[-]` are errors.
//!
//! The algorithm, its order of tries and its error cases follow the Go
//! source function by function; doublestar's own test table and Harbor's
//! are the unit tests below.

/// A pattern doublestar refuses (an unclosed `[` or `{`, a bad class, a
/// trailing `\`). Like doublestar, [`matches`] reports it only when the
/// match reaches the bad part; [`check`] looks at the whole pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("syntax error in pattern")]
pub struct BadPattern;

/// Whether `name` matches `pattern` as a whole, `/` separating components.
pub fn matches(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    do_matching(pattern, &split_path(name))
}

/// Refuses a pattern with a syntax error anywhere, so a rule is refused
/// when the configuration is read, not when some name reaches the error.
pub fn check(pattern: &str) -> Result<(), BadPattern> {
    let mut i = 0;
    while let Some(c) = pattern[i..].chars().next() {
        i += c.len_utf8();
        match c {
            '\\' => {
                let escaped = pattern[i..].chars().next().ok_or(BadPattern)?;
                i += escaped.len_utf8();
            }
            '[' => {
                let end = index_with_escaping(&pattern[i..], ']').ok_or(BadPattern)? + i;
                class_contains(&pattern[i..end].chars().collect::<Vec<_>>(), None)?;
                i = end + 1;
            }
            '{' => {
                let (options, end) = split_alternatives(&pattern[i..]).ok_or(BadPattern)?;
                for o in options {
                    check(o)?;
                }
                i += end;
            }
            _ => {}
        }
    }
    Ok(())
}

fn char_at(s: &str, i: usize) -> char {
    s[i..].chars().next().expect("index inside the string")
}

/// `path` split at each `/` not escaped by `\` (doublestar's
/// `splitPathOnSeparator`); a trailing `/` gives a last empty component.
fn split_path(path: &str) -> Vec<&str> {
    if !path.contains('/') {
        return vec![path];
    }
    let mut parts = Vec::new();
    let mut start = 0;
    let mut empty_end = false;
    while start < path.len() {
        match index_with_escaping(&path[start..], '/') {
            None => {
                empty_end = false;
                parts.push(&path[start..]);
                start = path.len();
            }
            Some(end) => {
                empty_end = true;
                parts.push(&path[start..start + end]);
                start += end + 1;
            }
        }
    }
    if empty_end {
        parts.push("");
    }
    parts
}

/// The first `r` in `s` not preceded by `\`.
pub fn index_with_escaping(s: &str, r: char) -> Option<usize> {
    let end = s.find(r)?;
    if end > 0 && s.as_bytes()[end - 1] == b'\\' {
        let start = end + r.len_utf8();
        return index_with_escaping(&s[start..], r).map(|e| e + start);
    }
    Some(end)
}

/// The alternatives of `{a,b,…}` (`s` starts after the `{`), nested braces
/// and escapes respected, and the index after the closing `}`.
pub fn split_alternatives(s: &str) -> Option<(Vec<&str>, usize)> {
    let mut options = Vec::new();
    let (mut idx, mut depth, mut escaped, mut start) = (0, 1, false, 0);
    while depth > 0 {
        if idx >= s.len() {
            return None;
        }
        let r = char_at(s, idx);
        if escaped {
            escaped = false;
        } else if r == '\\' {
            escaped = true;
        } else if r == '{' {
            depth += 1;
        } else if r == '}' {
            depth -= 1;
        } else if r == ',' && depth == 1 {
            options.push(&s[start..idx]);
            start = idx + r.len_utf8();
        }
        idx += r.len_utf8();
    }
    options.push(&s[start..idx - 1]);
    Some((options, idx))
}

/// Whether `pattern` can match zero characters.
fn is_zero_length(pattern: &str) -> Result<bool, BadPattern> {
    if pattern.is_empty() || pattern == "*" || pattern == "**" {
        return Ok(true);
    }
    if let Some(rest) = pattern.strip_prefix('{') {
        let (options, end) = split_alternatives(rest).ok_or(BadPattern)?;
        if !is_zero_length(&rest[end..])? {
            return Ok(false);
        }
        for o in options {
            if is_zero_length(o)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn do_matching(pattern: &str, names: &[&str]) -> Result<bool, BadPattern> {
    if pattern.is_empty() {
        match names {
            [] | [""] => return Ok(true),
            _ => {}
        }
    }
    let slash = index_with_escaping(pattern, '/');
    let component_end = slash.unwrap_or(pattern.len());
    if &pattern[..component_end] == "**" {
        let Some(slash) = slash else { return Ok(true) };
        // Errors below a `**` count as no match, as in doublestar.
        return Ok((0..names.len()).any(|i| do_matching(&pattern[slash + 1..], &names[i..]).unwrap_or(false)));
    }
    let Some(first) = names.first() else { return Ok(false) };
    let Some(rests) = match_component(pattern, first)? else { return Ok(false) };
    if rests.is_empty() && names.len() == 1 {
        return Ok(true);
    }
    if names.len() > 1 {
        for rest in rests {
            if do_matching(&rest, &names[1..])? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether the class `[…]` (its characters, `^` first for a negation)
/// holds `c`; with `None`, only checks the class. doublestar's order of
/// checks, so the same classes are errors.
fn class_contains(class: &[char], c: Option<char>) -> Result<bool, BadPattern> {
    if class.is_empty() {
        return Err(BadPattern);
    }
    let mut i = usize::from(class[0] == '^');
    let mut hit = false;
    while i < class.len() {
        let mut low = class[i];
        if low == '-' {
            return Err(BadPattern);
        }
        i += 1;
        if low == '\\' {
            low = *class.get(i).ok_or(BadPattern)?;
            i += 1;
        }
        let mut high = low;
        if class.get(i) == Some(&'-') {
            i += 1;
            high = *class.get(i).ok_or(BadPattern)?;
            if high == '-' {
                return Err(BadPattern);
            }
            i += 1;
            if high == '\\' {
                high = *class.get(i).ok_or(BadPattern)?;
                i += 1;
            }
        }
        if c.is_some_and(|c| low <= c && c <= high) {
            hit = true;
        }
    }
    Ok(hit)
}

/// Matches the first component of `pattern` against `name`: `None` when
/// it does not match, otherwise what is left of the pattern for the next
/// component, one entry per way it matched (alternatives may leave
/// different rests).
fn match_component(pattern: &str, name: &str) -> Result<Option<Vec<String>>, BadPattern> {
    let (mut pi, mut ni) = (0, 0);
    while pi < pattern.len() && ni < name.len() {
        let p = char_at(pattern, pi);
        let n = char_at(name, ni);
        match p {
            '/' => {
                pi += 1;
                break;
            }
            '\\' => {
                pi += 1;
                let escaped = pattern[pi..].chars().next().ok_or(BadPattern)?;
                if escaped != n {
                    return Ok(None);
                }
                pi += escaped.len_utf8();
                ni += n.len_utf8();
            }
            '*' => {
                pi += 1;
                if pi >= pattern.len() {
                    return Ok(Some(Vec::new()));
                }
                if char_at(pattern, pi) == '/' {
                    return Ok(Some(vec![pattern[pi + 1..].to_owned()]));
                }
                let mut j = ni;
                while j < name.len() {
                    if let Some(m) = match_component(&pattern[pi..], &name[j..])? {
                        return Ok(Some(m));
                    }
                    j += char_at(name, j).len_utf8();
                }
                return Ok(None);
            }
            '[' => {
                pi += 1;
                let end = index_with_escaping(&pattern[pi..], ']').ok_or(BadPattern)? + pi;
                let class: Vec<char> = pattern[pi..end].chars().collect();
                if class_contains(&class, Some(n))? == (class[0] == '^') {
                    return Ok(None);
                }
                pi = end + 1;
                ni += n.len_utf8();
            }
            '{' => {
                pi += 1;
                let (options, end) = split_alternatives(&pattern[pi..]).ok_or(BadPattern)?;
                pi += end;
                let mut rests: Option<Vec<String>> = None;
                for o in options {
                    if let Some(m) = match_component(&format!("{o}{}", &pattern[pi..]), &name[ni..])? {
                        rests.get_or_insert_with(Vec::new).extend(m);
                    }
                }
                return Ok(rests);
            }
            _ if p == '?' || p == n => {
                pi += p.len_utf8();
                ni += n.len_utf8();
            }
            _ => return Ok(None),
        }
    }
    if ni >= name.len() {
        if pi >= pattern.len() {
            return Ok(Some(Vec::new()));
        }
        let rest = &pattern[pi..];
        let slash = index_with_escaping(rest, '/');
        if is_zero_length(&rest[..slash.unwrap_or(rest.len())])? {
            return Ok(Some(match slash {
                None => Vec::new(),
                Some(s) => vec![rest[s + 1..].to_owned()],
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// doublestar v1.3.4's `matchTests` (doublestar_test.go), all of them:
    /// (pattern, name, matches, bad pattern).
    const DOUBLESTAR: &[(&str, &str, bool, bool)] = &[
        ("*", "", true, false),
        ("*", "/", false, false),
        ("/*", "/", true, false),
        ("/*", "/debug/", false, false),
        ("/*", "//", false, false),
        ("abc", "abc", true, false),
        ("*", "abc", true, false),
        ("*c", "abc", true, false),
        ("*/", "a/", true, false),
        ("a*", "a", true, false),
        ("a*", "abc", true, false),
        ("a*", "ab/c", false, false),
        ("a*/b", "abc/b", true, false),
        ("a*/b", "a/c/b", false, false),
        ("a*b*c*d*e*", "axbxcxdxe", true, false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true, false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true, false),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false, false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false, false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true, false),
        ("a*b?c*x", "abxbbxdbxebxczzy", false, false),
        ("ab[c]", "abc", true, false),
        ("ab[b-d]", "abc", true, false),
        ("ab[e-g]", "abc", false, false),
        ("ab[^c]", "abc", false, false),
        ("ab[^b-d]", "abc", false, false),
        ("ab[^e-g]", "abc", true, false),
        ("a\\*b", "ab", false, false),
        ("a?b", "a☺b", true, false),
        ("a[^a]b", "a☺b", true, false),
        ("a???b", "a☺b", false, false),
        ("a[^a][^a][^a]b", "a☺b", false, false),
        ("[a-ζ]*", "α", true, false),
        ("*[a-ζ]", "A", false, false),
        ("a?b", "a/b", false, false),
        ("a*b", "a/b", false, false),
        ("[\\]a]", "]", true, false),
        ("[\\-]", "-", true, false),
        ("[x\\-]", "x", true, false),
        ("[x\\-]", "-", true, false),
        ("[x\\-]", "z", false, false),
        ("[\\-x]", "x", true, false),
        ("[\\-x]", "-", true, false),
        ("[\\-x]", "a", false, false),
        ("[]a]", "]", false, true),
        ("[-]", "-", false, true),
        ("[x-]", "x", false, true),
        ("[x-]", "-", false, true),
        ("[x-]", "z", false, true),
        ("[-x]", "x", false, true),
        ("[-x]", "-", false, true),
        ("[-x]", "a", false, true),
        ("\\", "a", false, true),
        ("[a-b-c]", "a", false, true),
        ("[", "a", false, true),
        ("[^", "a", false, true),
        ("[^bc", "a", false, true),
        ("a[", "a", false, false),
        ("a[", "ab", false, true),
        ("*x", "xxx", true, false),
        ("[abc]", "b", true, false),
        ("a/**", "a", false, false),
        ("a/**", "a/b", true, false),
        ("a/**", "a/b/c", true, false),
        ("**/c", "c", true, false),
        ("**/c", "b/c", true, false),
        ("**/c", "a/b/c", true, false),
        ("**/c", "a/b", false, false),
        ("**/c", "abcd", false, false),
        ("**/c", "a/abc", false, false),
        ("a/**/b", "a/b", true, false),
        ("a/**/c", "a/b/c", true, false),
        ("a/**/d", "a/b/c/d", true, false),
        ("a/\\**", "a/b/c", false, false),
        ("a//b/c", "a/b/c", false, false),
        ("a/b/c", "a/b//c", false, false),
        ("a/", "a", false, false),
        ("ab{c,d}", "abc", true, false),
        ("ab{c,d,*}", "abcde", true, false),
        ("ab{c,d}[", "abcd", false, true),
        ("a{,bc}", "a", true, false),
        ("a{,bc}", "abc", true, false),
        ("a/{b/c,c/b}", "a/b/c", true, false),
        ("a/{b/c,c/b}", "a/c/b", true, false),
        ("{a/{b,c},abc}", "a/b", true, false),
        ("{a/{b,c},abc}", "a/c", true, false),
        ("{a/{b,c},abc}", "abc", true, false),
        ("{a/{b,c},abc}", "a/b/c", false, false),
        ("{a/ab*}", "a/abc", true, false),
        ("{a/*}", "a/b", true, false),
        ("{a/abc}", "a/abc", true, false),
        ("{a/b,a/c}", "a/c", true, false),
        ("abc/**", "abc/b", true, false),
        ("**/abc", "abc", true, false),
        ("abc**", "abc/b", false, false),
        ("**/*.txt", "abc/【test】.txt", true, false),
        ("**/【*", "abc/【test】.txt", true, false),
        ("broken-symlink", "broken-symlink", true, false),
        ("working-symlink/c/*", "working-symlink/c/d", true, false),
        ("working-sym*/*", "working-symlink/c", true, false),
        ("b/**/f", "b/symlink-dir/f", true, false),
    ];

    #[test]
    fn doublestar_v1_3_4_match_table() {
        for &(pattern, name, expected, bad) in DOUBLESTAR {
            let got = matches(pattern, name);
            match bad {
                true => assert_eq!(got, Err(BadPattern), "{pattern} on {name}"),
                false => assert_eq!(got, Ok(expected), "{pattern} on {name}"),
            }
        }
    }

    /// Harbor's `TestMatch` (src/pkg/reg/util/pattern_test.go), minus the
    /// empty pattern, which Harbor's wrapper answers before doublestar
    /// (the rules do the same: no filter).
    #[test]
    fn harbor_pattern_table() {
        for (pattern, name, expected) in [
            ("*", "library", true),
            ("*", "library/hello-world", false),
            ("**", "library/hello-world", true),
            ("{library,harbor}/**", "library/hello-world", true),
            ("{library,harbor}/**", "harbor/hello-world", true),
            ("1.?", "1.0", true),
            ("1.?", "1.01", false),
            ("v2.[4-6].*", "v2.4.0", true),
            ("v2.[4-7].*", "v2.7.0", true),
        ] {
            assert_eq!(matches(pattern, name), Ok(expected), "{pattern} on {name}");
        }
    }

    /// Where shell-style globs (globset, the crate used before) decide
    /// otherwise.
    #[test]
    fn the_cases_where_shell_globs_differ() {
        assert_eq!(matches("library/[!n]ginx", "library/nginx"), Ok(true), "[!n] holds ! and n");
        assert_eq!(matches("library/[!n]ginx", "library/xginx"), Ok(false));
        assert_eq!(matches("library/[^n]ginx", "library/nginx"), Ok(false), "[^n] negates");
        assert_eq!(matches("{,v*}", ""), Ok(true), "an empty alternative matches an untagged artifact");
        assert_eq!(matches("{,v*}", "v1"), Ok(true));
        assert_eq!(matches("{,v*}", "latest"), Ok(false));
        assert_eq!(matches("abc**", "abcdef"), Ok(true), "** inside a component is two stars");
    }

    #[test]
    fn check_refuses_what_some_name_would_reach() {
        for bad in ["[", "a[", "[]a]", "[-]", "[x-]", "\\", "ab{c,d", "{a,[}", "x[a-b-c]"] {
            assert_eq!(check(bad), Err(BadPattern), "{bad}");
        }
        for good in ["library/**", "{,v*}", "[!n]ginx", "a\\*b", "[\\]a]", "v2.[4-6].*", "{a/{b,c},abc}"] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        // Every pattern of the table that never errs passes the check.
        for &(pattern, _, _, bad) in DOUBLESTAR {
            if !bad && pattern != "a[" {
                assert_eq!(check(pattern), Ok(()), "{pattern}");
            }
        }
    }
}
