//! HTML building blocks of the console: escaping (every value shown comes
//! from inputs: account ids, subjects, reasons are hostile text), path
//! segments, the page frame, and JSON values as table cells.

use serde_json::Value;

/// `s` as HTML text or attribute value: `& < > " '` escaped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as one URL path segment or query value: everything but the
/// unreserved characters percent-encoded (so `/`, `?`, `#` in an id stay
/// inside its segment). The result is plain ASCII, still to be escaped
/// for HTML (`esc`) where it goes into an attribute.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The console page of an account.
pub fn account_href(account_id: &str) -> String {
    format!("/console/accounts/{}", seg(account_id))
}

/// The console page of an issued invoice.
pub fn invoice_href(account_id: &str, invoice_id: &str) -> String {
    format!(
        "/console/accounts/{}/invoices/{}",
        seg(account_id),
        seg(invoice_id)
    )
}

/// A link; `href` and `text` are escaped here.
pub fn link(href: &str, text: &str) -> String {
    format!(r#"<a href="{}">{}</a>"#, esc(href), esc(text))
}

/// A whole page: `body` is HTML already escaped by its builder; `title`
/// is text. With `signed_in`, the header has the search box and sign-out.
pub fn page(title: &str, body: &str, signed_in: bool) -> String {
    let nav = if signed_in {
        r#"<form class="search" method="get" action="/console/search"><input type="search" name="q" id="search-q" placeholder="account id" required><button type="submit" id="search-go">Search</button></form>
<form class="signout" method="post" action="/console/logout"><button type="submit">Sign out</button></form>"#
    } else {
        ""
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · billstream console</title><link rel="stylesheet" href="/console/static/console.css"></head>
<body><header><a class="brand" href="/console">billstream · support console</a>{nav}</header>
<main><h1>{title}</h1>
{body}</main></body></html>"#,
        title = esc(title),
    )
}

/// An error box (the browser test looks for `.error`).
pub fn error_box(message: &str) -> String {
    format!(r#"<div class="error" role="alert">{}</div>"#, esc(message))
}

/// A JSON value as cell text: strings as they are, `null` as a dash,
/// objects and arrays as compact JSON; escaped.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "—".to_string(),
        Some(Value::String(s)) => esc(s),
        Some(Value::Object(m)) if m.is_empty() => "—".to_string(),
        Some(Value::Array(a)) if a.is_empty() => "—".to_string(),
        Some(v) => esc(&v.to_string()),
    }
}

/// A two-column table of `fields` (label, key) of the object `v`.
pub fn fields_table(v: &Value, fields: &[(&str, &str)]) -> String {
    let mut out = String::from(r#"<table class="fields">"#);
    for (label, key) in fields {
        out.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>",
            esc(label),
            cell(v.get(key))
        ));
    }
    out.push_str("</table>");
    out
}

/// A table with one row per item of `rows` and one column per (label,
/// key); `first` renders the first column instead (e.g. a link), already
/// escaped.
pub fn rows_table(
    class: &str,
    rows: &[Value],
    cols: &[(&str, &str)],
    first: Option<&dyn Fn(&Value) -> String>,
) -> String {
    if rows.is_empty() {
        return r#"<p class="none">none</p>"#.to_string();
    }
    let mut out = format!(r#"<table class="{}"><thead><tr>"#, esc(class));
    for (label, _) in cols {
        out.push_str(&format!("<th>{}</th>", esc(label)));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for (i, (_, key)) in cols.iter().enumerate() {
            let text = match first {
                Some(f) if i == 0 => f(row),
                _ => cell(row.get(key)),
            };
            out.push_str(&format!("<td>{text}</td>"));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn markup_in_values_is_escaped_and_ids_stay_one_path_segment() {
        assert_eq!(
            esc(r#"<script>alert('x')</script> & "q""#),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(seg("a/b?c#d é"), "a%2Fb%3Fc%23d%20%C3%A9");
        assert_eq!(
            link(&account_href("<x>"), "<x>"),
            r#"<a href="/console/accounts/%3Cx%3E">&lt;x&gt;</a>"#
        );
        let row = json!({"reason": "<img src=x onerror=alert(1)>", "n": 3, "none": null});
        let html = rows_table(
            "t",
            &[row],
            &[("Reason", "reason"), ("N", "n"), ("-", "none")],
            None,
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("<td>3</td><td>—</td>"), "{html}");
        let page = page("<b>", "", true);
        assert!(page.contains("<title>&lt;b&gt; · billstream console</title>"));
    }
}
