//! Finding the line of a TOML file that sets a field, for errors like `h.toml:4: …`.

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// The line where a (possibly dotted) field is set, found by reading the TOML as text: the
/// deserialiser's spans stop at values it accepted.
pub(crate) fn locate_field(text: &str, field: &str) -> Option<usize> {
    let (table, key) = match field.rsplit_once('.') {
        Some((table, key)) => (Some(table), key),
        None => (None, field),
    };
    let mut current: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            let name = header.split(']').next().unwrap_or("").trim().to_string();
            if table.is_none() && name == key {
                return Some(index + 1);
            }
            current = Some(name);
            continue;
        }
        let Some((lhs, _)) = line.split_once('=') else {
            continue;
        };
        if lhs.trim() == key && current.as_deref() == table {
            return Some(index + 1);
        }
    }
    None
}
