// The console's only script: small conveniences; every page works without it.
(function () {
  "use strict";
  // Ask before a form marked data-confirm does something that cannot be undone.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    // One press, one request: the button waits for the answer.
    var buttons = form.querySelectorAll("button[type=submit]");
    window.setTimeout(function () {
      for (var i = 0; i < buttons.length; i++) { buttons[i].disabled = true; }
    }, 0);
  });
  // A file chosen for the bulk opt-out is shown in the text box before it is sent.
  var file = document.querySelector("input[type=file][data-fills]");
  if (file && window.FileReader) {
    file.addEventListener("change", function () {
      var target = document.getElementById(file.getAttribute("data-fills"));
      if (!target || !file.files.length) { return; }
      var reader = new FileReader();
      reader.onload = function () { target.value = String(reader.result).slice(0, 20000); };
      reader.readAsText(file.files[0]);
    });
  }
})();
