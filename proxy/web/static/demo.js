/*
 * The demo checkout served by `tokenproxy dev`: mounts the hosted card fields the way a
 * shop's checkout page does, and shows the {token, brand, last4} it gets back.
 */
(function () {
  "use strict";

  var config = JSON.parse(document.body.getAttribute("data-config"));
  var result = document.getElementById("result");
  var error = document.getElementById("error");

  function show(id, text) {
    document.getElementById(id).textContent = text;
  }

  var card = TokenProxy.mount("#card", {
    publishableKey: config.publishableKey,
    onToken: function (r) {
      error.textContent = "";
      show("token", r.token);
      show("brand", r.brand);
      show("last4", r.last4);
      show(
        "resolve",
        "curl -s " + config.proxy + "/v1/tokens/" + r.token +
          ' -H "Authorization: Bearer $(cat ' + config.devKeyFile + ')"'
      );
      result.hidden = false;
    },
    onError: function (e) {
      error.textContent = e.code + ": " + e.message;
    }
  });

  document.getElementById("pay").addEventListener("click", function () {
    card.submit().catch(function () {});
  });
})();
