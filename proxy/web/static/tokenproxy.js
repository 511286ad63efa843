/*
 * tokenproxy.js: include on the checkout page, from the proxy itself:
 *
 *   <script src="https://tokens.shop.example/elements/tokenproxy.js"></script>
 *   var card = TokenProxy.mount("#card", {
 *     publishableKey: "pk_...",
 *     postalCode: true,   // optional: the frame asks for the billing postal code too
 *     onToken: function (result) { ... result.token, result.brand, result.last4 ... },
 *     onError: function (error) { ... error.type, error.code, error.message ... }
 *   });
 *   // error.code "authentication_required": error.nextAction says where to send the
 *   // shopper (redirect_to_url.url); error.setup goes to POST /v1/cards/confirm after.
 *   payButton.onclick = function () { card.submit(); };   // also returns a Promise
 *
 * The billing postal code (sent to the partner for the issuer's address check, never
 * stored) comes from one place only: the frame's own field (postalCode: true), or,
 * when the page already has the billing address, card.submit({postalCode: "..."}).
 * Passing one to submit() while the field is shown is refused (validation_error,
 * code "postal_code_conflict"), since one of the two would be silently dropped. The
 * frame checks it as the proxy does; an invalid one is a validation_error with code
 * "invalid_postal_code" and param "postal_code", and nothing is sent.
 *
 * The card fields live in an iframe served by the proxy. Card data is typed into
 * that frame and sent from it straight to the proxy; this page only ever receives
 * {token, brand, last4}. No dependencies; ES5 plus Promise and URL.
 */
(function (global) {
  "use strict";

  var script = document.currentScript;
  if (!script || !script.src) {
    throw new Error("tokenproxy.js must be loaded with a <script src> from the proxy");
  }
  var PROXY_ORIGIN = new URL(script.src).origin;
  var FRAME_URL = new URL("card", script.src).href;

  function TokenProxyError(error) {
    this.name = "TokenProxyError";
    this.type = error.type || "api_error";
    this.code = error.code || "unknown";
    this.param = error.param || null;
    this.message = error.message || "The card could not be saved.";
    this.requestId = error.request_id || null;
    // code "authentication_required": the card waits for its holder (3-D Secure). Send
    // the shopper to nextAction.redirect_to_url.url in the top window, then have the
    // checkout server post `setup` to POST /v1/cards/confirm for the token.
    this.nextAction = error.next_action || null;
    this.setup = error.setup || null;
  }
  TokenProxyError.prototype = Object.create(Error.prototype);
  TokenProxyError.prototype.constructor = TokenProxyError;

  function mount(target, options) {
    var host = typeof target === "string" ? document.querySelector(target) : target;
    if (!host) throw new Error("TokenProxy.mount: no element to mount into");
    options = options || {};
    if (!/^pk_[A-Za-z0-9_-]+$/.test(options.publishableKey || "")) {
      // A secret key here would be published to every shopper: refuse outright.
      throw new Error("TokenProxy.mount: publishableKey must be a pk_ key");
    }
    var onToken = options.onToken || function () {};
    var onError = options.onError || function () {};
    var onChange = options.onChange || function () {};

    var frame = document.createElement("iframe");
    var hash = new URLSearchParams({ key: options.publishableKey, origin: location.origin });
    if (options.postalCode === true) hash.set("postalCode", "1");
    frame.src = FRAME_URL + "#" + hash.toString();
    frame.title = options.title || "Secure card details";
    frame.setAttribute("sandbox", "allow-scripts allow-same-origin");
    frame.setAttribute("allow", "");
    frame.setAttribute("scrolling", "no");
    frame.style.border = "0";
    frame.style.width = "100%";
    // The frame reports its real height once loaded; this only avoids a jump.
    frame.style.height = options.postalCode === true ? "260px" : "170px";
    frame.style.overflow = "hidden";

    var ready = false;
    var queued = null;
    var pending = null;

    function settle(ok, value) {
      var p = pending;
      pending = null;
      if (ok) onToken(value);
      else onError(value);
      if (p) (ok ? p.resolve : p.reject)(value);
    }

    function onMessage(event) {
      // Only our own frame, from the proxy's origin, is listened to.
      if (event.source !== frame.contentWindow || event.origin !== PROXY_ORIGIN) return;
      var data = event.data || {};
      switch (data.type) {
        case "tokenproxy:ready":
          ready = true;
          if (queued) {
            var message = queued;
            queued = null;
            send(message);
          }
          break;
        case "tokenproxy:resize":
          if (typeof data.height === "number" && data.height > 0 && data.height < 2000) {
            frame.style.height = Math.ceil(data.height) + "px";
          }
          break;
        case "tokenproxy:change":
          onChange({ complete: !!data.complete, brand: data.brand || null });
          break;
        case "tokenproxy:token":
          settle(true, {
            token: String(data.token),
            brand: String(data.brand),
            last4: String(data.last4)
          });
          break;
        case "tokenproxy:error":
          settle(false, new TokenProxyError(data.error || {}));
          break;
        default:
          break;
      }
    }

    function send(message) {
      frame.contentWindow.postMessage(message, PROXY_ORIGIN);
    }

    function submit(submitOptions) {
      if (pending) {
        return Promise.reject(
          new TokenProxyError({ type: "validation_error", code: "submit_in_progress" })
        );
      }
      var message = { type: "tokenproxy:submit" };
      var postalCode = (submitOptions || {}).postalCode;
      if (postalCode !== undefined && postalCode !== null) {
        if (typeof postalCode !== "string") {
          // A number would have lost its leading zeros (02134), and an object may not
          // even cross postMessage: refuse here rather than guess.
          var wrong = new TokenProxyError({
            type: "validation_error",
            code: "invalid_postal_code",
            param: "postal_code",
            message: "postalCode must be a string."
          });
          onError(wrong);
          return Promise.reject(wrong);
        }
        // The frame checks the value itself, with the rule of its own field.
        message.postalCode = postalCode;
      }
      return new Promise(function (resolve, reject) {
        pending = { resolve: resolve, reject: reject };
        if (ready) send(message);
        else queued = message;
      });
    }

    function unmount() {
      global.removeEventListener("message", onMessage);
      if (frame.parentNode) frame.parentNode.removeChild(frame);
    }

    global.addEventListener("message", onMessage);
    host.appendChild(frame);
    return { submit: submit, unmount: unmount, frame: frame };
  }

  global.TokenProxy = { mount: mount, Error: TokenProxyError, origin: PROXY_ORIGIN };
})(window);
