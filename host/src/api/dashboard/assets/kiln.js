// Kiln's dashboard: the little it needs of a script. Everything works without it
// but "check all" and the confirmations before a discard or a rollback.
document.addEventListener("DOMContentLoaded", () => {
  const all = document.getElementById("check-all");
  if (all) {
    all.addEventListener("change", () => {
      document.querySelectorAll("input.check").forEach((box) => { box.checked = all.checked; });
    });
  }
  document.querySelectorAll("[data-confirm]").forEach((button) => {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  });
});
