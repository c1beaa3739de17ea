"""End-to-end tests of stored templates (issue 4, point 2): PUT/GET/DELETE
/v1/templates/{name}, GET /v1/templates, POST /v1/templates/{name}/render,
and sending with "template"/"data"/"strict" through real Redis to the relay
(tests/relay.py), the received message parsed with Python's email package."""

import re
from datetime import datetime

from conftest import json_of

FROM = "Acme <noreply@acme.example>"
NASTY = "<b>&\"'"


def assert_error(r, status, field=None):
    """r is an error answer {"error": {type, message, field?}}; returns the error."""
    assert r.status_code == status, "expected %d, got %d: %s" % (status, r.status_code, r.text)
    err = json_of(r).get("error")
    assert isinstance(err, dict) and err.get("type") and err.get("message"), r.text
    if field is not None:
        assert err.get("field") == field, "error.field %r, wanted %r: %r" % (err.get("field"), field, err)
    return err


def put(c, name, expect=(200, 201), **parts):
    r = c.put("/v1/templates/" + name, json=parts)
    assert r.status_code in ((expect,) if isinstance(expect, int) else expect), r.text
    return json_of(r)


def render(c, name, data=None, **kw):
    body = {"data": data} if data is not None else {}
    body.update(kw)
    return c.post("/v1/templates/%s/render" % name, json=body)


def render_ok(c, name, data=None, **kw):
    r = render(c, name, data, **kw)
    assert r.status_code == 200, r.text
    return json_of(r)


def is_time(s):
    assert isinstance(s, str) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", s), s
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def body_text(msg, kind):
    part = msg.get_body(preferencelist=(kind,))
    assert part is not None, "no text/%s part in %s" % (kind, msg.get_content_type())
    return part.get_content().replace("\r\n", "\n").rstrip("\n")


def send(c, **kw):
    p = {"from": FROM, "to": ["ann@example.com"]}
    p.update(kw)
    return c.send(p)


# ---------------------------------------------------------------- CRUD

def test_put_get_list_delete_round_trip(gateway):
    c = gateway.client
    r = c.put("/v1/templates/welcome", json={"subject": "Hi {{name}}", "text": "Hello {{name}}"})
    assert r.status_code == 201, r.text
    t = json_of(r)
    assert t["name"] == "welcome"
    assert t["subject"] == "Hi {{name}}" and t["text"] == "Hello {{name}}" and t["html"] is None, t
    created = is_time(t["created_at"])
    assert is_time(t["updated_at"]) >= created

    r = c.get("/v1/templates/welcome")
    assert r.status_code == 200, r.text
    assert json_of(r) == t

    # Replacing: 200, created_at kept, a part not given is removed.
    t2 = put(c, "welcome", expect=200, text="Bye {{name}}", html="<p>Bye {{name}}</p>")
    assert t2["created_at"] == t["created_at"], (t, t2)
    assert is_time(t2["updated_at"]) >= is_time(t["updated_at"])
    got = json_of(c.get("/v1/templates/welcome"))
    assert got["subject"] is None and got["text"] == "Bye {{name}}" and got["html"] == "<p>Bye {{name}}</p>", got

    put(c, "a.first-one_1", expect=201, text="x")
    put(c, "Zed", expect=201, html="<i>z</i>")
    lst = json_of(c.get("/v1/templates"))["data"]
    names = [x["name"] for x in lst]
    assert names == sorted(names) == ["Zed", "a.first-one_1", "welcome"], lst
    for x in lst:
        assert set(x) == {"name", "created_at", "updated_at"}, x
        is_time(x["created_at"])

    r = c.delete("/v1/templates/welcome")
    assert r.status_code == 204, r.text
    assert_error(c.get("/v1/templates/welcome"), 404)
    assert_error(c.delete("/v1/templates/welcome"), 404)
    assert [x["name"] for x in json_of(c.get("/v1/templates"))["data"]] == ["Zed", "a.first-one_1"]


def test_put_validation(gateway):
    c = gateway.client
    assert_error(c.put("/v1/templates/" + "n" * 65, json={"text": "x"}), 422, "name")
    assert_error(c.put("/v1/templates/bad%20name", json={"text": "x"}), 422, "name")
    assert_error(c.put("/v1/templates/ok", json={"text": "x", "body": "y"}), 422, "body")
    assert_error(c.put("/v1/templates/ok", json={"subject": "only"}), 422, "text")
    assert_error(c.put("/v1/templates/ok", json={"text": 5}), 422, "text")
    assert_error(c.put("/v1/templates/ok", data="{nope", headers={"Content-Type": "application/json"}), 400)
    assert_error(c.put("/v1/templates/ok", json={"html": "x" * (512 * 1024 + 1)}), 422, "html")
    assert_error(c.get("/v1/templates/ok"), 404)


def test_compile_error_names_part_line_and_column(gateway):
    c = gateway.client
    html = "<p>\n  line two\n  {{#items}}<li>{{.}}</li>\n"
    err = assert_error(c.put("/v1/templates/broken", json={"text": "fine {{x}}", "html": html}), 422, "html")
    assert "line 3" in err["message"] and "column 3" in err["message"], err
    err = assert_error(c.put("/v1/templates/broken", json={"subject": "Hi {{name", "text": "x"}), 422, "subject")
    assert "line 1" in err["message"] and "column 4" in err["message"], err
    assert_error(c.get("/v1/templates/broken"), 404)


def test_tenant_isolation(gateway, api_key):
    c = gateway.client
    put(c, "private", text="acme only {{x}}", subject="s")
    other = gateway.mg.client(api_key("globex"))
    assert_error(other.get("/v1/templates/private"), 404)
    assert_error(other.delete("/v1/templates/private"), 404)
    assert_error(render(other, "private", {}), 404)
    assert json_of(other.get("/v1/templates"))["data"] == []
    assert_error(send(other, template="private", data={}), 422, "template")
    # The other tenant's template of the same name is its own.
    put(other, "private", expect=201, text="globex {{x}}")
    put(other, "layout", expect=201, text="GLOBEX LAYOUT")
    put(c, "uses", text="[{{> layout}}]")
    assert render_ok(c, "uses")["text"] == "[]"  # globex's "layout" is invisible to acme
    assert json_of(c.get("/v1/templates/private"))["text"] == "acme only {{x}}"
    assert render_ok(other, "private", {"x": 1})["text"] == "globex 1"


def test_templates_scope(gateway, api_key):
    k = api_key("acme", "--scopes", "send,read")
    c = gateway.mg.client(k)
    assert_error(c.get("/v1/templates"), 403)
    assert_error(c.put("/v1/templates/x", json={"text": "x"}), 403)
    assert_error(gateway.mg.client().get("/v1/templates"), 401)


# ---------------------------------------------------------------- render

def test_render_escapes_html_only(gateway):
    c = gateway.client
    put(c, "esc", subject="S {{v}}", text="T {{v}}", html="<p>{{v}} {{{v}}} {{&v}}</p>")
    out = render_ok(c, "esc", {"v": NASTY})
    assert out == {
        "subject": "S " + NASTY,
        "text": "T " + NASTY,
        "html": "<p>&lt;b&gt;&amp;&quot;&#39; %s %s</p>" % (NASTY, NASTY),
    }, out


def test_render_missing_parts_null_and_any_data(gateway):
    c = gateway.client
    put(c, "t", text="{{#.}}<{{.}}>{{/.}}")
    assert render_ok(c, "t", [1, 2, 3]) == {"subject": None, "text": "<1><2><3>", "html": None}
    assert render_ok(c, "t", "str")["text"] == "<str>"
    assert render_ok(c, "t")["text"] == ""
    r = c.post("/v1/templates/t/render", data="", headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert_error(c.post("/v1/templates/t/render", json={"data": {}, "extra": 1}), 422, "extra")
    assert_error(c.post("/v1/templates/t/render", json={"strict": "yes"}), 422, "strict")
    assert_error(render(c, "nope", {}), 404)


def test_render_strict(gateway):
    c = gateway.client
    put(c, "s", subject="Hi {{user.first}}", html="<p>{{user.name}}</p>")
    assert render_ok(c, "s", {"user": {}}) == {"subject": "Hi ", "text": None, "html": "<p></p>"}
    err = assert_error(render(c, "s", {"user": {"first": "A"}}, strict=True), 422, "data")
    assert "user.name" in err["message"] and "html" in err["message"], err
    assert render_ok(c, "s", {"user": {"first": "A", "name": "B"}}, strict=True)["html"] == "<p>B</p>"


def test_render_partials_same_part(gateway):
    c = gateway.client
    put(c, "footer", subject="FOOT-S", text="-- {{company}}", html="<footer>{{company}}</footer>")
    put(c, "mail", subject="{{title}} {{> footer}}", text="Body\n{{> footer}}\n",
        html="<main>{{title}}</main>{{> footer}}{{> missing}}")
    out = render_ok(c, "mail", {"title": "T&C", "company": "A&B"})
    assert out["subject"] == "T&C FOOT-S", out
    # A standalone partial tag takes its line's newline with it (spec).
    assert out["text"] == "Body\n-- A&B", out
    assert out["html"] == "<main>T&amp;C</main><footer>A&amp;B</footer>", out


def test_render_layout_with_blocks(gateway):
    c = gateway.client
    put(c, "layout", subject="[Acme] {{$title}}untitled{{/title}}",
        text="{{$body}}no body{{/body}}\n--\nAcme",
        html="<html><h1>{{$title}}untitled{{/title}}</h1>{{$body}}{{/body}}</html>")
    put(c, "receipt",
        subject="{{<layout}}{{$title}}Receipt {{n}}{{/title}}{{/layout}}",
        text="{{<layout}}{{$body}}Thanks {{name}}{{/body}}{{/layout}}",
        html="{{<layout}}{{$title}}Receipt {{n}}{{/title}}{{$body}}<p>Thanks {{name}}</p>{{/body}}{{/layout}}")
    out = render_ok(c, "receipt", {"n": 42, "name": "<Ann>"})
    assert out["subject"] == "[Acme] Receipt 42", out
    assert out["text"] == "Thanks <Ann>\n--\nAcme", out
    assert out["html"] == "<html><h1>Receipt 42</h1><p>Thanks &lt;Ann&gt;</p></html>", out


def test_render_self_recursion_is_bounded(gateway):
    c = gateway.client
    put(c, "loop", text="x{{> loop}}")
    r = render(c, "loop", {})
    assert r.status_code == 422, r.text


# ---------------------------------------------------------------- send

def test_send_with_template_delivers_rendered_parts(gateway):
    c = gateway.client
    put(c, "footer", text="-- {{org}}", html="<small>{{org}}</small>")
    put(c, "receipt", subject="Receipt #{{order.id}} for {{name}}",
        text="Hi {{name}},\n{{#items}}- {{title}}\n{{/items}}{{> footer}}",
        html="<p>Hi {{name}}</p><ul>{{#items}}<li>{{title}}</li>{{/items}}</ul>{{> footer}}")
    data = {"name": "Ann " + NASTY, "order": {"id": 42}, "org": "A&B",
            "items": [{"title": "Tea"}, {"title": "Cake <3"}]}
    r = send(c, template="receipt", data=data)
    assert r.status_code == 202, r.text
    mid = json_of(r)["id"]
    [m] = gateway.relay.wait_messages(1)
    assert str(m.msg["Subject"]) == "Receipt #42 for Ann " + NASTY
    assert body_text(m.msg, "plain") == "Hi Ann %s,\n- Tea\n- Cake <3\n-- A&B" % NASTY
    assert body_text(m.msg, "html") == ("<p>Hi Ann &lt;b&gt;&amp;&quot;&#39;</p>"
                                        "<ul><li>Tea</li><li>Cake &lt;3</li></ul><small>A&amp;B</small>")
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    assert msg["subject"] == "Receipt #42 for Ann " + NASTY


def test_send_template_errors(gateway):
    c = gateway.client
    put(c, "t", subject="Hi {{user.name}}", text="x {{other}}")
    put(c, "nosubject", text="x")
    err = assert_error(send(c, template="t", data={"user": {}}, strict=True), 422, "data")
    assert "user.name" in err["message"] and "subject" in err["message"], err
    assert_error(send(c, template="missing", data={}), 422, "template")
    assert_error(send(c, template="bad name", data={}), 422, "template")
    assert_error(send(c, template=7, data={}), 422, "template")
    assert_error(send(c, template="t", data={}, subject="mine"), 422, "subject")
    assert_error(send(c, template="t", data={}, html="<p>mine</p>"), 422, "html")
    assert_error(send(c, template="nosubject", data={}), 422, "template")
    assert_error(send(c, template="t", data={}, strict="yes"), 422, "strict")
    # A rendered subject must still be one clean header line.
    assert_error(send(c, template="t", data={"user": {"name": "a\r\nBcc: x@y.example"}}), 422, "subject")
    assert_error(send(c, template="t", data={"user": {"name": "é" * 1001}}), 422, "subject")
    assert gateway.relay.messages() == []


def test_send_non_strict_missing_is_empty(gateway):
    c = gateway.client
    put(c, "lax", subject="Hi {{user.name}}!", text="[{{nothing}}]", html="<p>{{nothing.here}}</p>")
    r = send(c, template="lax", data={"user": {}}, strict=False)
    assert r.status_code == 202, r.text
    [m] = gateway.relay.wait_messages(1)
    assert str(m.msg["Subject"]) == "Hi !"
    assert body_text(m.msg, "plain") == "[]"
    assert body_text(m.msg, "html") == "<p></p>"


def test_send_inline_data_without_stored_template(gateway):
    c = gateway.client
    r = send(c, subject="Order {{id}} {{v}}", text="Dear {{name}} {{v}}", html="<b>{{name}}</b> {{v}}",
             data={"id": 7, "name": "Bob", "v": NASTY})
    assert r.status_code == 202, r.text
    [m] = gateway.relay.wait_messages(1)
    assert str(m.msg["Subject"]) == "Order 7 " + NASTY
    assert body_text(m.msg, "plain") == "Dear Bob " + NASTY
    assert body_text(m.msg, "html") == "<b>Bob</b> &lt;b&gt;&amp;&quot;&#39;"


def test_send_inline_errors(gateway):
    c = gateway.client
    err = assert_error(send(c, subject="ok", text="a\n{{#open}}b", data={}), 422, "text")
    assert "line 2" in err["message"] and "column 1" in err["message"], err
    err = assert_error(send(c, subject="{{who}}", text="x", data={}, strict=True), 422, "data")
    assert "who" in err["message"], err
    # Without data nothing is rendered: the braces go out as written.
    r = send(c, subject="Literal {{x}}", text="{{y}}")
    assert r.status_code == 202, r.text
    [m] = gateway.relay.wait_messages(1)
    assert str(m.msg["Subject"]) == "Literal {{x}}"
    assert body_text(m.msg, "plain") == "{{y}}"
