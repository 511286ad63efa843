/*
 * tokenproxy hosted card fields: runs inside the iframe that tokenproxy.js mounts.
 *
 * The card number, expiry and CVC live only in this frame, which has the proxy's
 * origin: the checkout page cannot read them (same-origin policy). On submit the
 * card goes straight to POST /v1/cards on this origin, and only {token, brand,
 * last4} is posted to the parent, with the parent's exact origin as the target.
 *
 * The brand rules (IIN ranges, lengths, CVC lengths) come from the server in
 * <body data-config>, so the frame and proxy/domain/card.py never disagree.
 * No inline script, no eval, no third-party code: the page's CSP forbids them.
 *
 * A billing postal code comes either from this frame's own field (mounted with
 * postalCode: true) or from the page's submit({postalCode}), never both: with two
 * sources one would silently lose, so that call is refused as postal_code_conflict.
 */
(function () {
  "use strict";

  var config = JSON.parse(document.body.getAttribute("data-config") || "{}");
  var RULES = config.rules || { ranges: [], lengths: {}, cvc: {} };
  var TYPICAL_LENGTH = { amex: 15, diners: 14 };

  // ------------------------------------------------------------------ rules

  function digitsOf(text) {
    return String(text).replace(/[\s-]/g, "");
  }

  function luhn(digits) {
    if (!/^[0-9]+$/.test(digits)) return false;
    var sum = 0;
    for (var i = 0; i < digits.length; i++) {
      var d = digits.charCodeAt(digits.length - 1 - i) - 48;
      if (i % 2 === 1) {
        d *= 2;
        if (d > 9) d -= 9;
      }
      sum += d;
    }
    return sum % 10 === 0;
  }

  /* The brand whose IIN range the digits start with, ignoring length (ranges are
     sorted longest prefix first, as in proxy/domain/card.py). */
  function brandForPrefix(digits) {
    for (var i = 0; i < RULES.ranges.length; i++) {
      var r = RULES.ranges[i];
      var prefix = digits.slice(0, r[0]);
      if (prefix.length === r[0] && /^[0-9]+$/.test(prefix)) {
        var n = parseInt(prefix, 10);
        if (n >= r[1] && n <= r[2]) return r[3];
      }
    }
    return null;
  }

  /* The brand of a complete number (prefix and length both fit), else null. */
  function detectBrand(digits) {
    var brand = brandForPrefix(digits);
    if (brand === null || RULES.lengths[brand].indexOf(digits.length) < 0) return null;
    return brand;
  }

  function cvcLength(brand) {
    return RULES.cvc[brand] || 3;
  }

  function maxLength(brand) {
    var lengths = brand ? RULES.lengths[brand] : [19];
    return lengths[lengths.length - 1];
  }

  /* Errors: {code, message} or null. `final` is true on blur and submit, when an
     incomplete value is an error too; while typing only definite mistakes show. */
  function checkNumber(raw, final) {
    var digits = digitsOf(raw);
    if (!/^[0-9]*$/.test(digits)) {
      return { code: "invalid_number", message: "Your card number may only contain digits." };
    }
    if (digits.length === 0) {
      return final ? { code: "incomplete_number", message: "Enter your card number." } : null;
    }
    var brand = brandForPrefix(digits);
    if (brand === null && digits.length >= 4) {
      return { code: "unsupported_brand", message: "This card brand is not accepted." };
    }
    var complete = brand !== null && RULES.lengths[brand].indexOf(digits.length) >= 0;
    var typical = TYPICAL_LENGTH[brand] || 16;
    if (complete && !luhn(digits) && (final || digits.length >= typical)) {
      return { code: "invalid_number", message: "Your card number is invalid." };
    }
    if (digits.length > maxLength(brand)) {
      return { code: "invalid_number", message: "Your card number is too long." };
    }
    if (final && !complete) {
      return { code: "incomplete_number", message: "Your card number is incomplete." };
    }
    return null;
  }

  function parseExpiry(raw) {
    var m = /^\s*([0-9]{1,2})\s*\/?\s*([0-9]{0,4})\s*$/.exec(String(raw));
    if (!m) return null;
    return { month: m[1], year: m[2] };
  }

  function checkExpiry(raw, final, today) {
    var now = today || new Date();
    if (String(raw).trim() === "") {
      return final ? { code: "incomplete_expiry", message: "Enter the expiry date." } : null;
    }
    var parsed = parseExpiry(raw);
    if (parsed === null) {
      return { code: "invalid_expiry", message: "Enter the expiry date as MM / YY." };
    }
    var month = parseInt(parsed.month, 10);
    if ((parsed.month.length === 2 || final) && (month < 1 || month > 12)) {
      return { code: "invalid_expiry_month", message: "The expiry month must be 01 to 12." };
    }
    if (parsed.year.length !== 2 && parsed.year.length !== 4) {
      return final ? { code: "incomplete_expiry", message: "The expiry date is incomplete." } : null;
    }
    var year = parseInt(parsed.year, 10);
    if (parsed.year.length === 2) year += 2000;
    var thisYear = now.getFullYear();
    var thisMonth = now.getMonth() + 1;
    if (year < thisYear || (year === thisYear && month < thisMonth)) {
      return { code: "expired_card", message: "Your card has expired." };
    }
    if (year > thisYear + 50) {
      return { code: "invalid_expiry_year", message: "The expiry year is too far ahead." };
    }
    return null;
  }

  function checkCvc(raw, brand, final) {
    var cvc = String(raw).trim();
    if (!/^[0-9]*$/.test(cvc)) {
      return { code: "invalid_cvc", message: "The security code may only contain digits." };
    }
    var wanted = brand ? cvcLength(brand) : null;
    if (wanted !== null && cvc.length > wanted) {
      return { code: "invalid_cvc", message: "The security code has " + wanted + " digits." };
    }
    if (final && (cvc.length === 0 || (wanted !== null ? cvc.length !== wanted : cvc.length < 3))) {
      return { code: "incomplete_cvc", message: "Your card's security code is incomplete." };
    }
    return null;
  }

  // The server's rule (proxy/domain/requests.py): 1-12 ASCII letters, digits, spaces
  // and dashes, starting and ending with a letter or digit, at most 10 digits. The
  // digit cap is what keeps any card number (12 digits or more) out of the field.
  var POSTAL_CODE = /^[A-Za-z0-9](?:[A-Za-z0-9 -]{0,10}[A-Za-z0-9])?$/;
  var POSTAL_CODE_MAX_DIGITS = 10;

  function checkPostalCode(raw, final) {
    // Spaces around it are a typing or autofill slip, not part of the code.
    var value = String(raw).trim();
    if (value === "") {
      return final ? { code: "incomplete_postal_code", message: "Enter your postal code." } : null;
    }
    if (!/^[A-Za-z0-9 -]*$/.test(value)) {
      return {
        code: "invalid_postal_code",
        message: "Your postal code may only contain letters, digits, spaces and dashes."
      };
    }
    if (value.length > 12 || value.replace(/[^0-9]/g, "").length > POSTAL_CODE_MAX_DIGITS) {
      return { code: "invalid_postal_code", message: "Your postal code is too long." };
    }
    // A dash at the end may be half-typed; only a finished value must end right.
    if (final && !POSTAL_CODE.test(value)) {
      return { code: "invalid_postal_code", message: "Your postal code is invalid." };
    }
    return null;
  }

  /* A postal code handed over by the page: it cannot be fixed in the frame, so an
     empty or non-string one is invalid rather than incomplete. */
  function checkGivenPostalCode(value) {
    if (typeof value !== "string" || value.trim() === "") {
      return { code: "invalid_postal_code", message: "The postal code is invalid." };
    }
    return checkPostalCode(value, true);
  }

  function formatNumber(digits, brand) {
    var groups = brand === "amex" ? [4, 6, 5] : [4, 4, 4, 4, 3];
    var out = [];
    var at = 0;
    for (var i = 0; i < groups.length && at < digits.length; i++) {
      out.push(digits.slice(at, at + groups[i]));
      at += groups[i];
    }
    if (at < digits.length) out.push(digits.slice(at));
    return out.join(" ");
  }

  // The frame's own global, never the checkout page's; the browser test compares
  // these rules with proxy/domain/card.py through it.
  window.TokenProxyCardRules = {
    luhn: luhn,
    detectBrand: detectBrand,
    brandForPrefix: brandForPrefix,
    cvcLength: cvcLength,
    checkNumber: checkNumber,
    checkExpiry: checkExpiry,
    checkCvc: checkCvc,
    checkPostalCode: checkPostalCode
  };

  // ------------------------------------------------------- parent handshake

  var params = new URLSearchParams(location.hash.slice(1));
  var publishableKey = params.get("key") || "";
  var parentOrigin = params.get("origin") || "";
  var askPostalCode = params.get("postalCode") === "1";
  var allowed = config.origins || [];
  var embedded = window.parent !== window;
  var ancestors = location.ancestorOrigins;
  // frame-ancestors already keeps other sites from embedding us. This also refuses
  // an allowed site that names another allowed site as its origin: the token would
  // be posted to that other origin, never to the page that asked.
  var trusted =
    embedded &&
    /^pk_/.test(publishableKey) &&
    allowed.indexOf(parentOrigin) >= 0 &&
    (!ancestors || ancestors.length === 0 || ancestors[0] === parentOrigin);

  function tell(message) {
    if (trusted) window.parent.postMessage(message, parentOrigin);
  }

  // ----------------------------------------------------------------- fields

  var form = document.getElementById("card-form");
  var status = document.getElementById("form-status");
  var fields = {
    number: document.getElementById("number"),
    expiry: document.getElementById("expiry"),
    cvc: document.getElementById("cvc")
  };
  if (askPostalCode) fields.postal_code = document.getElementById("postal_code");
  // Checked, reported and cleared in this order; the names are the params onError gets.
  var order = Object.keys(fields);
  var brandLabel = document.getElementById("brand");
  var busy = false;

  if (!trusted) {
    status.textContent = "This card form cannot be used on this page.";
    return;
  }
  if (askPostalCode) document.getElementById("postal_code-field").hidden = false;
  order.forEach(function (name) {
    fields[name].disabled = false;
  });

  function currentBrand() {
    return brandForPrefix(digitsOf(fields.number.value));
  }

  function show(name, error) {
    var input = fields[name];
    var slot = document.getElementById(name + "-error");
    var text = error ? error.message : "";
    if (slot.textContent !== text) slot.textContent = text;
    input.setAttribute("aria-invalid", error ? "true" : "false");
    resize();
  }

  function check(name, final) {
    if (name === "number") return checkNumber(fields.number.value, final);
    if (name === "expiry") return checkExpiry(fields.expiry.value, final);
    if (name === "postal_code") return checkPostalCode(fields.postal_code.value, final);
    return checkCvc(fields.cvc.value, currentBrand(), final);
  }

  function changed() {
    var complete = order.every(function (n) {
      return check(n, true) === null;
    });
    tell({ type: "tokenproxy:change", complete: complete, brand: currentBrand() });
  }

  fields.number.addEventListener("input", function () {
    var input = fields.number;
    var atEnd = input.selectionStart === input.value.length;
    var digits = input.value.replace(/[^0-9]/g, "").slice(0, 19);
    var brand = brandForPrefix(digits);
    // Regroup only when typing at the end, so editing in the middle keeps the caret.
    if (atEnd) input.value = formatNumber(digits, brand);
    brandLabel.textContent = brand ? brand.replace("mastercard", "Mastercard") : "";
    fields.cvc.maxLength = brand ? cvcLength(brand) : 4;
    show("number", check("number", false));
    if (fields.cvc.value) show("cvc", check("cvc", false));
    changed();
  });
  fields.expiry.addEventListener("input", function (event) {
    var input = fields.expiry;
    var deleting = event.inputType && event.inputType.indexOf("delete") === 0;
    var digits = input.value.replace(/[^0-9]/g, "").slice(0, 4);
    if (!deleting && input.selectionStart === input.value.length) {
      if (digits.length === 1 && digits > "1") digits = "0" + digits;
      input.value = digits.length >= 2 ? digits.slice(0, 2) + " / " + digits.slice(2) : digits;
    }
    show("expiry", check("expiry", false));
    changed();
  });
  fields.cvc.addEventListener("input", function () {
    fields.cvc.value = fields.cvc.value.replace(/[^0-9]/g, "");
    show("cvc", check("cvc", false));
    changed();
  });
  if (askPostalCode) {
    fields.postal_code.addEventListener("input", function () {
      show("postal_code", check("postal_code", false));
      changed();
    });
  }
  order.forEach(function (name) {
    fields[name].addEventListener("blur", function () {
      if (fields[name].value) show(name, check(name, true));
    });
  });
  form.addEventListener("submit", function (event) {
    // Enter in a field must not navigate the frame; the checkout page decides when to pay.
    event.preventDefault();
  });

  // ----------------------------------------------------------------- submit

  function newIdempotencyKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.prototype.map
      .call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); })
      .join("");
  }

  function nextAction(action) {
    if (!action || typeof action.type !== "string") return null;
    var picked = { type: action.type };
    var redirect = action.redirect_to_url;
    if (action.type === "redirect_to_url" && redirect && /^https?:\/\//.test(redirect.url)) {
      picked.redirect_to_url = { url: redirect.url, return_url: redirect.return_url || null };
    }
    return picked;
  }

  // The field an error from the proxy is about: by its param, or for a partner's
  // decline, which names no param, by its code (incorrect_cvc, expired_card, ...).
  var PARAM_FIELDS = {
    number: "number",
    exp_month: "expiry",
    exp_year: "expiry",
    cvc: "cvc",
    postal_code: "postal_code"
  };
  var CODE_FIELDS = {
    invalid_number: "number",
    incorrect_number: "number",
    expired_card: "expiry",
    invalid_expiry_month: "expiry",
    invalid_expiry_year: "expiry",
    invalid_cvc: "cvc",
    incorrect_cvc: "cvc",
    invalid_postal_code: "postal_code",
    incorrect_zip: "postal_code"
  };
  // The proxy's messages are written for the shop's developers; the shopper reads these.
  var FIELD_MESSAGES = {
    number: "Your card number is invalid.",
    expiry: "Your card's expiry date is invalid.",
    cvc: "Your card's security code is incorrect.",
    postal_code: "Your postal code is invalid."
  };

  function fieldOfError(err) {
    var name = PARAM_FIELDS[err.param] || CODE_FIELDS[err.code] || null;
    return name !== null && fields[name] ? name : null;
  }

  function fieldMessage(name, code) {
    return code === "expired_card" ? "Your card has expired." : FIELD_MESSAGES[name];
  }

  function fail(error) {
    tell({ type: "tokenproxy:error", error: error });
  }

  function submit(given) {
    if (busy) {
      fail({ type: "validation_error", code: "submit_in_progress", message: "Already submitting." });
      return;
    }
    var hasGiven = given !== undefined && given !== null;
    if (hasGiven && askPostalCode) {
      // The page's mistake, not the shopper's: nothing to show in the fields.
      fail({
        type: "validation_error",
        code: "postal_code_conflict",
        param: "postal_code",
        message: "The postal code field is shown; submit() must not pass one too."
      });
      return;
    }
    var first = null;
    order.forEach(function (name) {
      var error = check(name, true);
      show(name, error);
      if (error && first === null) first = { name: name, error: error };
    });
    if (first !== null) {
      // Nothing leaves the frame for an invalid card: the shopper fixes it first.
      fields[first.name].focus();
      fail({
        type: "validation_error",
        code: first.error.code,
        param: first.name,
        message: first.error.message
      });
      return;
    }
    if (hasGiven) {
      var givenError = checkGivenPostalCode(given);
      if (givenError !== null) {
        fail({
          type: "validation_error",
          code: givenError.code,
          param: "postal_code",
          message: givenError.message
        });
        return;
      }
    }
    var expiry = parseExpiry(fields.expiry.value);
    var year = parseInt(expiry.year, 10);
    var card = {
      number: digitsOf(fields.number.value),
      exp_month: parseInt(expiry.month, 10),
      exp_year: expiry.year.length === 2 ? 2000 + year : year,
      cvc: fields.cvc.value
    };
    // Sent only when there is one: the proxy then adds no billing address at all.
    var postalCode = askPostalCode ? fields.postal_code.value : hasGiven ? given : "";
    if (postalCode.trim() !== "") card.postal_code = postalCode.trim();
    var body = JSON.stringify(card);
    busy = true;
    form.setAttribute("aria-busy", "true");
    status.textContent = "Saving your card…";
    fetch("../v1/cards", {
      method: "POST",
      headers: {
        Authorization: "Bearer " + publishableKey,
        "Content-Type": "application/json",
        "Idempotency-Key": newIdempotencyKey(),
        "TokenProxy-Checkout-Origin": parentOrigin
      },
      body: body,
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer"
    })
      .then(function (response) {
        return response.json().then(
          function (payload) { return { status: response.status, payload: payload }; },
          function () { return { status: response.status, payload: null }; }
        );
      })
      .then(function (result) {
        if (result.status === 201 && result.payload && result.payload.token) {
          // The token stands for the card now: clear the fields so the card data
          // leaves the page's memory and screen (and any screenshot of it).
          order.forEach(function (name) {
            fields[name].value = "";
          });
          brandLabel.textContent = "";
          status.textContent = "Card ending " + result.payload.last4 + " saved.";
          tell({
            type: "tokenproxy:token",
            token: result.payload.token,
            brand: result.payload.brand,
            last4: result.payload.last4
          });
          return;
        }
        var err = (result.payload && result.payload.error) || {};
        status.textContent = err.message || "The card could not be saved.";
        var about = fieldOfError(err);
        if (about !== null) {
          // The shopper typed it, so the shopper is the one to fix it: on the field.
          show(about, { code: err.code, message: fieldMessage(about, err.code) });
          fields[about].focus();
        }
        var failure = {
          type: err.type || "api_error",
          code: err.code || "http_" + result.status,
          param: err.param || null,
          message: err.message || "The card could not be saved.",
          request_id: err.request_id || null
        };
        if (err.code === "authentication_required") {
          // The issuer wants the cardholder: the page goes through next_action (a 3-D
          // Secure page opens in the top window, not in this frame), and its server
          // confirms the setup. Only the named fields pass; no card data is in them.
          status.textContent = "Your bank needs to confirm it is you.";
          failure.setup = typeof err.setup === "string" ? err.setup : null;
          failure.next_action = nextAction(err.next_action);
        }
        fail(failure);
      })
      .catch(function () {
        status.textContent = "The card could not be saved. Check your connection.";
        fail({ type: "api_connection_error", code: "network_error", message: "Network error." });
      })
      .then(function () {
        busy = false;
        form.removeAttribute("aria-busy");
      });
  }

  window.addEventListener("message", function (event) {
    if (event.source !== window.parent || event.origin !== parentOrigin) return;
    var data = event.data || {};
    if (data.type === "tokenproxy:submit") submit(data.postalCode);
  });

  function resize() {
    tell({ type: "tokenproxy:resize", height: document.documentElement.scrollHeight });
  }

  tell({ type: "tokenproxy:ready" });
  resize();
})();
