// The console's only script of its own: "Copy" buttons (data-copy names the
// field). Everything else works without JavaScript.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const field = document.querySelector(button.dataset.copy);
  if (!field) return;
  navigator.clipboard.writeText(field.value).then(() => { button.textContent = "Copied"; });
});
