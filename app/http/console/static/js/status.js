// The status line: a short notice of what just happened, withdrawn after a while or as soon as the
// customer does something new (a form sent), so that it never stands beside a later error.

let timer = null;

export function notify(message) {
  const status = document.getElementById("status");
  status.textContent = message;
  status.classList.add("shown");
  clearTimeout(timer);
  timer = setTimeout(() => status.classList.remove("shown"), 6000);
}

export function dismiss() {
  const status = document.getElementById("status");
  clearTimeout(timer);
  status.classList.remove("shown");
  status.textContent = "";
}
