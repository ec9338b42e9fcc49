// The console's client pages (see app.js for the route contract).
import { heading, replace } from "./ui.js";

export const routes = [
  {
    path: "/",
    title: "Dashboard",
    roles: ["client"],
    nav: "Dashboard",
    view: async (main, params, page) => {
      replace(main, heading("Dashboard", `Signed in for ${page.session.user.client_id}`));
    },
  },
];
