// Tiny DOM helpers shared by the modules.

export const $ = (id) => document.getElementById(id);

export function el(tag, cls = "", text = "") {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text) node.textContent = text;
  return node;
}
