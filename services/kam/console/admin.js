// The console's admin pages (see app.js for the route contract).
import { heading, replace } from "./ui.js";

export const routes = [
  {
    path: "/",
    title: "Overview",
    roles: ["admin"],
    nav: "Overview",
    view: async (main) => {
      replace(main, heading("Overview"));
    },
  },
];
