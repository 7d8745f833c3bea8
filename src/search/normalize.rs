//! String folding for search: FHIR's default string match ignores case and accents.
//!
//! A value is decomposed (NFKD), its combining marks dropped, lower-cased; apostrophes vanish
//! (`O'Brien` is `obrien`), any other character that is not a letter or digit separates words,
//! and runs of separators collapse to one space. The same folding applies to stored values and
//! to query values, so `Müller`, `MULLER` and `muller` are the same word.

use unicode_normalization::UnicodeNormalization as _;
use unicode_normalization::char::is_combining_mark;

/// The folded form: words of lower-case letters and digits, separated by single spaces.
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.nfkd() {
        if is_combining_mark(c) || matches!(c, '\'' | '\u{2019}' | '\u{02bc}') {
            continue;
        }
        if c.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.extend(c.to_lowercase());
        } else {
            pending_space = true;
        }
    }
    out
}

/// The first `n` characters of `s` (all of it if shorter).
pub fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(at, _)| s.get(..at).unwrap_or(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_accents_and_separators_fold_away() {
        assert_eq!(fold("Müller"), "muller");
        assert_eq!(fold("  JOSÉ   María  "), "jose maria");
        assert_eq!(fold("O'Brien"), "obrien");
        assert_eq!(fold("Jean-Luc\tPicard"), "jean luc picard");
        assert_eq!(fold("Ǆemal"), "dzemal");
        assert_eq!(fold("ﬁle №5"), "file no5");
        assert_eq!(fold("—"), "");
    }

    #[test]
    fn prefixes_count_characters_not_bytes() {
        assert_eq!(prefix("ølsen", 2), "øl");
        assert_eq!(prefix("ab", 5), "ab");
        assert_eq!(prefix("", 1), "");
    }
}
