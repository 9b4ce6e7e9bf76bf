// pkgate's page script: every change goes through the JSON API; the page itself only reads.
"use strict";

(function () {
  const base = document.body.dataset.base || "";
  const announcer = document.getElementById("announce");

  // --- talking to the API -------------------------------------------------------------------

  // Answers as sentences a person can act on; the API's own message otherwise.
  function sentence(status, data) {
    const message = data && typeof data.error === "string" ? data.error : "";
    if (status === 0) {
      return "pkgate could not be reached. Check your connection and try again.";
    }
    if (status === 429) {
      return "Too many attempts. Wait a few minutes, then try again.";
    }
    if (status === 403 && /Origin/.test(message)) {
      return "This request did not come from this site's own page, so it was refused. Reload the page and try again.";
    }
    if (status === 401 && !/email or password/i.test(message)) {
      return "Your session has ended. Reload the page and sign in again.";
    }
    if (status >= 500) {
      return message ? finish(message) : "pkgate had a problem. Try again in a moment.";
    }
    return message ? finish(message) : "That did not work (error " + status + ").";
  }

  function finish(text) {
    return /[.!?]$/.test(text) ? text : text + ".";
  }

  async function api(method, path, body) {
    const init = {
      method: method,
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(base + "/api" + path, init);
    } catch (err) {
      return { ok: false, status: 0, data: null };
    }
    let data = null;
    if ((response.headers.get("Content-Type") || "").startsWith("application/json")) {
      data = await response.json();
    }
    return { ok: response.ok, status: response.status, data: data };
  }

  function announce(text) {
    if (!announcer) return;
    announcer.textContent = "";
    // A change after a tick, so screen readers announce the same text twice in a row too.
    window.setTimeout(function () { announcer.textContent = text; }, 50);
  }

  function showError(form, text) {
    const box = form.querySelector(".form-error");
    if (box) {
      box.textContent = text;
    }
  }

  function busy(form, on) {
    form.querySelectorAll("button, input, select").forEach(function (el) { el.disabled = on; });
    form.setAttribute("aria-busy", on ? "true" : "false");
  }

  function field(form, name) {
    const el = form.elements.namedItem(name);
    return el ? el.value : "";
  }

  // --- dates in the viewer's time zone ------------------------------------------------------

  const formatter = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    timeZoneName: "short",
  });

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      const when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when.getTime())) {
        el.textContent = formatter.format(when);
        el.title = when.toISOString();
      }
    });
  }

  // Re-read one section of the current page from the server (after a change made through the
  // API) and put it in place of the old one.
  async function refreshSection(id) {
    const response = await fetch(window.location.href, { credentials: "same-origin", cache: "no-store" });
    const html = await response.text();
    const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(id);
    const old = document.getElementById(id);
    if (fresh && old) {
      old.replaceWith(document.adoptNode(fresh));
      localTimes(fresh);
    }
  }

  // After a section was replaced, the focus goes to its heading (the old button is gone).
  function focusHeading(id) {
    const section = document.getElementById(id);
    const heading = section ? section.querySelector("h2") : null;
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus();
    }
  }

  // --- forms --------------------------------------------------------------------------------

  const actions = {
    async signin(form) {
      const answer = await api("POST", "/session", {
        email: field(form, "email"), password: field(form, "password"),
      });
      if (answer.ok) {
        window.location.reload();
        return;
      }
      showError(form, sentence(answer.status, answer.data));
      const password = form.elements.namedItem("password");
      password.value = "";
      return password;
    },

    async register(form) {
      const done = document.getElementById("register-done");
      done.hidden = true;
      done.textContent = "";
      const answer = await api("POST", "/v1/tokens", {
        email: field(form, "email"), language: field(form, "language"),
      });
      if (!answer.ok) {
        showError(form, sentence(answer.status, answer.data));
        return form.elements.namedItem("email");
      }
      done.textContent = answer.data.message;
      done.hidden = false;
      form.reset();
    },

    async reset(form) {
      const answer = await api("POST", "/v1/tokens/reset", {
        email: field(form, "email").trim(), code: field(form, "code").trim(),
      });
      if (!answer.ok) {
        showError(form, sentence(answer.status, answer.data));
        return form.elements.namedItem("code");
      }
      form.reset();
      return showCreated(answer.data);
    },

    async "create-token"(form) {
      const body = { name: field(form, "name").trim() };
      const expiry = field(form, "expiry");
      if (expiry === "date") {
        const day = field(form, "date");
        if (!day) {
          showError(form, "Choose the day the token expires.");
          return form.elements.namedItem("date");
        }
        // The end of that day where the viewer is.
        const parts = day.split("-").map(Number);
        body.expires_at = new Date(parts[0], parts[1] - 1, parts[2], 23, 59, 59).toISOString();
      } else if (expiry) {
        body.expires_in = Number(expiry);
      }
      const scopes = Array.from(form.querySelectorAll("input[name=scopes]:checked"))
        .map(function (el) { return el.value; });
      if (form.querySelector("input[name=scopes]")) {
        if (!scopes.length) {
          showError(form, "Choose at least one registry the token works for.");
          return form.querySelector("input[name=scopes]");
        }
        body.scopes = scopes;
      }
      const answer = await api("POST", "/tokens", body);
      if (!answer.ok) {
        showError(form, sentence(answer.status, answer.data));
        return form.elements.namedItem("name");
      }
      form.reset();
      form.elements.namedItem("expiry").dispatchEvent(new Event("change", { bubbles: true }));
      await refreshSection("my-tokens");
      return showCreated(answer.data);
    },
  };

  function showCreated(token) {
    const panel = document.getElementById("created");
    const template = document.getElementById("setup-template");
    const placeholder = template.dataset.placeholder;
    const setup = document.getElementById("created-setup");
    setup.replaceChildren(template.content.cloneNode(true));
    // The secret only ever exists in this page's memory: put it into the snippets' text.
    setup.querySelectorAll("code").forEach(function (el) {
      el.textContent = el.textContent.split(placeholder).join(token.token);
    });
    // Only the setup of the registries the token works for, the first one open.
    const scopes = token.scopes || [];
    setup.querySelectorAll("details[data-scope]").forEach(function (el) {
      if (scopes.length && scopes.indexOf(el.dataset.scope) < 0) el.remove();
    });
    const first = setup.querySelector("details");
    if (first) first.open = true;
    document.getElementById("new-secret").textContent = token.token;
    const expires = document.getElementById("new-expires");
    if (token.expires_at) {
      const time = document.createElement("time");
      time.setAttribute("datetime", token.expires_at);
      expires.replaceChildren(time);
      localTimes(expires);
    } else {
      expires.textContent = "never";
    }
    document.getElementById("new-scopes").textContent = scopes.join(", ");
    document.getElementById("created-h").textContent = "Your new token “" + token.name + "”";
    panel.hidden = false;
    return panel;
  }

  function dismissCreated() {
    const panel = document.getElementById("created");
    document.getElementById("new-secret").textContent = "";
    document.getElementById("created-setup").replaceChildren();
    panel.hidden = true;
    const name = document.getElementById("token-name");
    if (name) name.focus();
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    const action = form.dataset ? form.dataset.action : undefined;
    if (!action || !actions[action]) return;
    event.preventDefault();
    showError(form, "");
    busy(form, true);
    let next = null;
    try {
      next = await actions[action](form);
    } finally {
      busy(form, false);
    }
    // Focus moves only once the form's controls are enabled again.
    if (next) next.focus();
  });

  // --- copy buttons -------------------------------------------------------------------------

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (err) {
        // Fall through to the selection-based copy.
      }
    }
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (err) {
      ok = false;
    }
    area.remove();
    return ok;
  }

  async function copy(button) {
    const source = document.getElementById(button.dataset.copy);
    if (!source) return;
    const ok = await copyText(source.textContent);
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.textContent = ok ? "Copied" : "Copy failed";
    announce(ok ? "Copied to the clipboard." : "Copying failed: select the text and copy it yourself.");
    window.setTimeout(function () { button.textContent = label; }, 2000);
  }

  // --- revoking -----------------------------------------------------------------------------

  let pending = null;

  function askRevoke(button) {
    const dialog = document.getElementById("revoke-dialog");
    const owner = button.dataset.owner ? " of " + button.dataset.owner : "";
    document.getElementById("revoke-text").textContent =
      "“" + button.dataset.name + "” (" + button.dataset.prefix + "…)" + owner + " will stop working at once.";
    pending = button;
    dialog.returnValue = "";
    dialog.showModal();
  }

  async function revoke(button) {
    const path = button.dataset.scope === "admin"
      ? "/admin/tokens/" + encodeURIComponent(button.dataset.revoke)
      : "/tokens/" + encodeURIComponent(button.dataset.revoke);
    const answer = await api("DELETE", path);
    const section = button.closest("section");
    if (answer.status === 400 || answer.status === 404) {
      // Revoked meanwhile (another tab, another admin, the CLI): show the list as it is now.
      if (section && section.id) {
        await refreshSection(section.id);
        focusHeading(section.id);
      }
      announce("Token “" + button.dataset.name + "” was already revoked; the list is up to date.");
      return;
    }
    if (!answer.ok) {
      announce(sentence(answer.status, answer.data));
      button.focus();
      return;
    }
    if (section && section.id) {
      await refreshSection(section.id);
      focusHeading(section.id);
    }
    announce("Token “" + button.dataset.name + "” revoked. It no longer works anywhere.");
  }

  const dialog = document.getElementById("revoke-dialog");
  if (dialog) {
    dialog.addEventListener("close", function () {
      const button = pending;
      pending = null;
      if (!button) return;
      if (dialog.returnValue === "confirm") {
        revoke(button);
      } else {
        button.focus();
      }
    });
  }

  // --- buttons ------------------------------------------------------------------------------

  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.copy) {
      copy(button);
    } else if (button.dataset.revoke) {
      askRevoke(button);
    } else if (button.dataset.action === "dismiss-created") {
      dismissCreated();
    } else if (button.dataset.action === "refresh-blocklist") {
      button.disabled = true;
      const answer = await api("POST", "/admin/blocklist/refresh");
      if (answer.ok) {
        await refreshSection("blocklist");
        focusHeading("blocklist");
        announce("Blocklist refreshed.");
      } else {
        button.disabled = false;
        const box = document.getElementById("refresh-error");
        if (box) box.textContent = sentence(answer.status, answer.data);
      }
    } else if (button.dataset.action === "signout") {
      button.disabled = true;
      const answer = await api("DELETE", "/session");
      if (answer.ok || answer.status === 401) {
        window.location.assign(base + "/");
      } else {
        button.disabled = false;
        announce(sentence(answer.status, answer.data));
      }
    }
  });

  // The expiry menu shows the date field only for "On a date…".
  document.addEventListener("change", function (event) {
    const select = event.target;
    if (!select.dataset || !select.dataset.toggleDate) return;
    const box = document.getElementById(select.dataset.toggleDate);
    box.hidden = select.value !== "date";
    if (!box.hidden) {
      const input = box.querySelector("input");
      const today = new Date();
      input.min = today.getFullYear() + "-" + String(today.getMonth() + 1).padStart(2, "0") +
        "-" + String(today.getDate()).padStart(2, "0");
    }
  });

  localTimes(document);
})();
